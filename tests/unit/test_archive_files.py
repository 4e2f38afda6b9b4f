"""Archive files of the event log: exact round trip, merge-free rewrite, clear errors."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from incident_engine.adapters.archive_files import (
    ArchivedIncident,
    ArchiveError,
    archive_files,
    read_archive,
    write_month,
)
from incident_engine.reporting.source import LogScope

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 4, 10, 0, 0, 123456, tzinfo=UTC)
ENVELOPE = (
    '{"specversion":"1.0","id":"e1","type":"incident.reported","data":{"severity":"critical","region":"uk"}}'
)


def _incident(name: str, *types: str) -> ArchivedIncident:
    rows = [
        {"incident_id": name, "seq": seq, "event_id": f"{name}-{seq}", "type": kind, "source": "/t",
         "event_time": T0 + timedelta(minutes=seq), "processed_at": T0 + timedelta(minutes=seq, seconds=1),
         "kafka_partition": 2, "kafka_offset": seq, "envelope": ENVELOPE if seq == 1 else "{}",
         "trace_context": {"traceparent": "00-x"} if seq == 1 else None}
        for seq, kind in enumerate(types, start=1)
    ]  # fmt: skip
    fired = T0 + timedelta(minutes=30)
    horizons = (fired - timedelta(microseconds=1), fired - timedelta(seconds=5))
    # a firing with its horizons, and one recorded before horizons were (both read back as written)
    return ArchivedIncident(
        name, rows, [(fired, 2, *horizons), (fired + timedelta(minutes=1), 2, None, None)]
    )


def test_round_trip_is_exact(tmp_path: Path) -> None:
    written = [_incident("B", "incident.reported", "incident.restored"), _incident("A", "incident.reported")]
    path = write_month(tmp_path, "2025-03", written)
    assert path.name == "event-log-2025-03.jsonl.gz" and not list(tmp_path.glob("*.tmp"))
    assert archive_files(tmp_path) == [("2025-03", path)]
    read = list(read_archive(tmp_path))
    assert [i.incident_id for i in read] == ["A", "B"]
    assert read[1].rows == written[0].rows  # envelope text, microseconds and time zones kept
    assert read[1].firings == written[0].firings


def test_scope_applies_to_archived_incidents() -> None:
    incident = _incident("C", "incident.reported", "incident.restored")
    assert LogScope(severity="critical", region="uk").archived_group(incident) is not None
    assert LogScope(region="au").archived_group(incident) is None
    assert LogScope(reported_since=T0 + timedelta(hours=1)).archived_group(incident) is None
    cut = LogScope(processed_until=T0 + timedelta(minutes=1, seconds=1)).archived_group(incident)
    assert cut is not None and len(cut[1]) == 1 and cut[2] == []
    by_event_time = LogScope(event_until=T0 + timedelta(minutes=1)).archived_group(incident)  # reported only
    assert by_event_time is not None and [row[3] for row in by_event_time[1]] == ["incident.reported"]
    assert LogScope(event_until=T0).archived_group(incident) is None  # nothing had happened yet


def test_unreadable_archives_say_which_file(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="does not exist"):
        archive_files(tmp_path / "missing")
    (tmp_path / "event-log-2025-01.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(ArchiveError, match=r"event-log-2025-01\.jsonl\.gz"):
        list(read_archive(tmp_path))
    (tmp_path / "event-log-2025-01.jsonl.gz").write_bytes(gzip.compress(b'{"kind": "other"}\n'))
    with pytest.raises(ArchiveError, match="not an event-log archive"):
        list(read_archive(tmp_path))


async def test_archive_refuses_months_the_live_topic_still_accepts(tmp_path: Path) -> None:
    """A month within INCIDENTS_MAX_EVENT_AGE (+ skew) of now stays: a report redelivered from it would
    no longer be known, and would open its incident again. Refused before anything is read."""
    from incident_engine.retention import ArchiveRefused, archive_before

    now = datetime(2026, 11, 30, tzinfo=UTC)
    with pytest.raises(ArchiveRefused, match="the latest is --before 2026-10"):
        nowhere, november = "postgresql://nobody@127.0.0.1:1/none", datetime(2026, 11, 1, tzinfo=UTC)
        await archive_before(nowhere, tmp_path, november, now, timedelta(days=30, minutes=5))

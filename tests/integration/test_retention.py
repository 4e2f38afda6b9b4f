"""Retention: `incidents db archive` moves closed months to files, and replay and report stay exact."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from devstack.stack import Service, fresh_database
from incident_engine.adapters.outbox_codec import encode_messages
from incident_engine.adapters.postgres.migrate import migrate, migration_files
from incident_engine.adapters.store import OutboxRow
from incident_engine.config import Settings
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.entrypoints.commands import replay_check
from incident_engine.reporting.run import compliance_report, state_at
from incident_engine.reporting.seed import record_history, write_log, write_projections
from incident_engine.reporting.source import LogScope
from incident_engine.retention import ArchiveRefused, archive_before
from incident_engine.timeforms import parse_month_start
from tests.integration.test_replay_report import _history

pytestmark = pytest.mark.integration

UNTIL = datetime(2025, 4, 20, tzinfo=UTC)  # the recorded engine ran until then
NOW = datetime(2025, 5, 15, tzinfo=UTC)


def _events() -> list[dict[str, Any]]:
    """February and March 2025 (all restored, from the report test) and April (O1 still open)."""
    events = _history()
    events.append({
        "specversion": "1.0", "id": "ret-open", "source": "/channels/test", "type": "incident.reported",
        "subject": "O1", "time": datetime(2025, 4, 2, 9, 0, tzinfo=UTC),
        "data": {"severity": "low", "region": "uk", "summary": "still open"},
    })  # fmt: skip
    return events


async def _seed(dsn: str) -> None:
    log = record_history(SlaDomain(PolicyRegistry.load()), _events(), UNTIL)
    await write_log(dsn, log)
    await write_projections(dsn, log)


async def _seeded(server: str) -> str:
    dsn = await fresh_database(server)
    await migrate(dsn)
    await _seed(dsn)
    return dsn


async def _count(dsn: str, sql: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


async def _report(dsn: str, archive: Path | None, **window: Any) -> dict[str, Any]:
    domain = SlaDomain(PolicyRegistry.load())
    since, until = window.pop("since", None), window.pop("until", None)
    report = await compliance_report(dsn, domain, since, until, now=NOW, archive=archive, **window)
    return report.to_json()


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": dsn}
    env.pop("INCIDENTS_ARCHIVE_DIR", None)
    command = [sys.executable, "-m", "incident_engine.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


async def test_archive_then_replay_and_report_stay_exact(postgres: Service, tmp_path: Path) -> None:
    dsn = await _seeded(postgres.url)
    settings = Settings(database_url=dsn)
    events, incidents, problems = await replay_check(dsn, settings)
    assert problems == [] and (events, incidents) == (28, 10)
    march = {"since": datetime(2025, 3, 1, tzinfo=UTC), "until": datetime(2025, 4, 1, tzinfo=UTC)}
    # the week of the report test: C0, reported before it, counts for downtime in it (down_since)
    week = {"since": datetime(2025, 3, 3, tzinfo=UTC), "until": datetime(2025, 3, 10, tzinfo=UTC)}
    before_march, before_all = await _report(dsn, None, **march), await _report(dsn, None)
    before_week = await _report(dsn, None, **week)
    before_uk = await _report(dsn, None, **week, region="uk", severity="critical")

    folder = tmp_path / "archive"
    done = await archive_before(dsn, folder, parse_month_start("2025-04"), NOW)
    assert [(m.month, m.incidents, m.events) for m in done] == [("2025-02", 1, 2), ("2025-03", 8, 25)]
    assert sorted(p.name for p in folder.iterdir()) == [
        "event-log-2025-02.jsonl.gz", "event-log-2025-03.jsonl.gz",
    ]  # fmt: skip
    # only April's open incident is left in PostgreSQL: log, firings and projections of the rest are gone
    assert await _count(dsn, "SELECT count(*) FROM event_log") == 1
    assert await _count(dsn, "SELECT count(*) FROM incidents") == 1
    assert await _count(dsn, "SELECT count(*) FROM timer_firings WHERE incident_id <> 'O1'") == 0

    events, incidents, problems = await replay_check(dsn, settings, folder)
    assert problems == [] and (events, incidents) == (28, 10)  # files + what remains = the whole log
    assert await _report(dsn, folder, **march) == before_march
    assert await _report(dsn, folder) == before_all
    assert await _report(dsn, folder, **week) == before_week
    assert await _report(dsn, folder, **week, region="uk", severity="critical") == before_uk
    assert (await _report(dsn, None))["groups"] != before_all["groups"]  # the files are needed
    domain = SlaDomain(PolicyRegistry.load())
    as_of = datetime(2025, 3, 4, 10, 30, tzinfo=UTC)  # C2 acknowledged, not yet failed over
    state, _ = await state_at(dsn, domain, LogScope("C2", processed_until=as_of), archive=folder)
    assert state.incidents["C2"].state == "acknowledged"

    check = _cli(dsn, "replay", "--check", "--archive", str(folder))
    assert check.returncode == 0, check.stderr
    assert "replayed 28 events of 10 incidents" in check.stderr
    monthly = _cli(
        dsn, "report", "--month", "2025-03", "--format", "json", "--no-progress", "--archive", str(folder)
    )
    assert monthly.returncode == 0, monthly.stderr
    cli_report = orjson.loads(monthly.stdout)
    for key in ("groups", "availability", "weekly", "breaches_per_clock", "events_replayed"):
        assert cli_report[key] == before_march[key], key
    without = _cli(dsn, "replay", "--check")  # the archived incidents are not in the log any more
    assert without.returncode == 0, without.stderr

    again = await archive_before(dsn, folder, parse_month_start("2025-04"), NOW)
    assert again == []  # nothing left to archive before April


async def test_archive_refuses_an_open_month_and_unrelayed_outputs(postgres: Service, tmp_path: Path) -> None:
    dsn = await _seeded(postgres.url)
    folder = tmp_path / "archive"
    with pytest.raises(ArchiveRefused, match=r"2025-04 \(1, e.g. 'O1'\)"):
        await archive_before(dsn, folder, parse_month_start("2025-05"), NOW)
    with pytest.raises(ArchiveRefused, match="current month 2025-05"):
        await archive_before(dsn, folder, parse_month_start("2025-06"), NOW)
    assert not folder.exists()  # refused as a whole: nothing written, nothing deleted
    assert await _count(dsn, "SELECT count(*) FROM event_log") == 28

    cli = _cli(dsn, "db", "archive", "--before", "2025-05", "--to", str(folder))
    assert cli.returncode == 1 and "open (not restored) incidents" in cli.stderr
    assert "Traceback" not in cli.stderr and len(cli.stderr.strip().splitlines()) <= 2
    bad = _cli(dsn, "db", "archive", "--before", "March", "--to", str(folder))
    assert bad.returncode == 2 and "YYYY-MM" in bad.stderr and "Traceback" not in bad.stderr

    # an output of a March incident not yet relayed to Kafka keeps March in the database
    waiting = OutboxRow(0, "incidents.state", b"C2", "out-1", b"{}")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO outbox (kafka_partition, message_count, messages) VALUES (0, 1, $1)",
            encode_messages([waiting]),
        )
    finally:
        await conn.close()
    with pytest.raises(ArchiveRefused, match="2025-03: outputs of incident 'C2' wait in the outbox"):
        await archive_before(dsn, folder, parse_month_start("2025-04"), NOW)
    assert not folder.exists()  # refused before February was taken either
    assert await _count(dsn, "SELECT count(*) FROM event_log WHERE incident_id = 'C2'") == 4
    february = _cli(dsn, "db", "archive", "--before", "2025-03", "--to", str(folder))  # closed, relayed
    assert february.returncode == 0, february.stderr
    assert "archived 2025-02: 1 incidents, 2 events" in february.stderr
    assert [p.name for p in folder.iterdir()] == ["event-log-2025-02.jsonl.gz"]


async def test_migration_0006_on_a_database_with_data(postgres: Service) -> None:
    """A database at 0003 with rows migrates on; replay --check passes and the log stays append-only."""
    dsn = await fresh_database(postgres.url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE schema_migrations (version text PRIMARY KEY, applied_at"
                           " timestamptz NOT NULL DEFAULT now())")  # fmt: skip
        for path in migration_files():
            if path.stem <= "0003":
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.stem)
    finally:
        await conn.close()
    await _seed(dsn)
    applied = await migrate(dsn)
    assert "0006_retention" in applied
    _, _, problems = await replay_check(dsn, Settings(database_url=dsn))
    assert problems == []
    conn = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await conn.execute("DELETE FROM event_log WHERE incident_id = 'C1'")
        await conn.execute("SET enable_seqscan = off")  # a table this small would be scanned anyway
        explained = await conn.fetch(  # GET /incidents' order (index of migration 0011)
            "EXPLAIN SELECT incident_id FROM incidents ORDER BY reported_at DESC, incident_id DESC LIMIT 5"
        )
        plan = "\n".join(r[0] for r in explained)
        assert "incidents_reported_idx" in plan and "Sort" not in plan
    finally:
        await conn.close()


async def test_migration_0010_fills_summary_and_source_of_older_projections(postgres: Service) -> None:
    """Projections stored before summary/source were kept (key missing, or re-saved as null) get
    them from the logged report, so live outputs and replay agree; replay --check stays clean."""
    dsn = await _seeded(postgres.url)
    conn = await asyncpg.connect(dsn)
    try:
        # O1 as stored before the upgrade (no keys), C1 as re-saved by an upgraded engine (nulls).
        await conn.execute(
            "UPDATE incidents SET body = (body::jsonb - 'summary' - 'source')::json WHERE incident_id = 'O1'"
        )
        await conn.execute(
            'UPDATE incidents SET body = (body::jsonb || \'{"summary": null, "source": null}\')::json'
            " WHERE incident_id = 'C1'"
        )
        await conn.execute("DELETE FROM schema_migrations WHERE version LIKE '0010_%'")
    finally:
        await conn.close()
    assert "0010_projection_summary_backfill" in await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        bodies = {
            r["incident_id"]: orjson.loads(r["body"])
            for r in await conn.fetch("SELECT incident_id, body::text AS body FROM incidents")
        }
    finally:
        await conn.close()
    assert (bodies["O1"]["summary"], bodies["O1"]["source"]) == ("still open", "/channels/test")
    assert bodies["C1"]["summary"] is not None and bodies["C1"]["source"] is not None
    _, _, problems = await replay_check(dsn, Settings(database_url=dsn))
    assert problems == []

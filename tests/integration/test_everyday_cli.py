"""`incidents report` and `replay --as-of` as a new user meets them: the default period, the HTML file,
event time against processing time. Each runs the CLI against a real PostgreSQL log."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from devstack.stack import Service, fresh_database
from incident_engine.adapters.postgres.migrate import migrate
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.reporting.compliance import DEFAULT_PERIOD_NOTE
from incident_engine.reporting.seed import record_history, seeded_database, write_log
from incident_engine.timeforms import month_of

pytestmark = pytest.mark.integration


def _event(number: int, incident: str, kind: str, at: datetime, **data: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"ev-{number}", "source": "/channels/phone/au",
            "type": f"incident.{kind}", "subject": incident, "time": at, "data": data or None}  # fmt: skip


def _cli(
    dsn: str, *args: str, cwd: Path | None = None, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": dsn, "COLUMNS": str(columns)}
    command = [sys.executable, "-m", "incident_engine.cli", *args, "--no-progress"]
    return subprocess.run(command, env=env, capture_output=True, timeout=120, text=True, cwd=cwd)


@pytest.fixture(scope="module")
async def new_install(postgres: Service) -> str:
    """A new install: one critical incident an hour ago, acknowledged in 1.3 s, restored after 40 min;
    and one of last month, which the default report must leave out."""
    now = datetime.now(UTC)
    start, _ = month_of(now)
    t0 = max(now - timedelta(hours=1), start)
    old = start - timedelta(days=10)
    events = [
        _event(1, "NEW-1", "reported", t0, severity="critical", region="au", summary="checkout down"),
        _event(2, "NEW-1", "acknowledged", t0 + timedelta(seconds=1.3)),
        _event(3, "NEW-1", "restored", t0 + timedelta(minutes=40)),
        _event(4, "OLD-1", "reported", old, severity="critical", region="au", summary="last month"),
        _event(5, "OLD-1", "acknowledged", old + timedelta(minutes=20)),
        _event(6, "OLD-1", "restored", old + timedelta(minutes=50)),
    ]
    dsn, _ = await seeded_database(postgres.url, SlaDomain(PolicyRegistry.load()), events, now)
    return dsn


async def test_report_defaults_to_the_current_month_and_says_so(new_install: str) -> None:
    now = datetime.now(UTC)
    start, end = month_of(now)
    run = _cli(new_install, "report", "--format", "json")
    assert run.returncode == 0, run.stderr
    body = orjson.loads(run.stdout)
    assert (body["since"], body["until"]) == (start.isoformat(), end.isoformat())
    assert body["period"].startswith(f"in {start:%B %Y} so far")
    assert body["period_note"] == DEFAULT_PERIOD_NOTE
    overall = next(g for g in body["groups"] if g["severity"] == g["region"] == "all")
    assert overall["incidents"] == 1  # last month's incident is not in it
    assert overall["minutes"]["ack_wall"]["median"] == pytest.approx(1.3 / 60)
    if now - start > timedelta(days=1):  # not the 32 % of "first incident to now"
        assert next(a for a in body["availability"] if a["region"] == "all")["availability"] > 0.9

    table = _cli(new_install, "report", columns=60)  # a pipe, and a narrow COLUMNS: still whole
    assert table.returncode == 0, table.stderr
    assert f"in {start:%B %Y} so far" in table.stdout and DEFAULT_PERIOD_NOTE in table.stdout
    assert "…" not in table.stdout and "1.3 s / 1.3 s" in table.stdout
    assert "breaches a/rs/rv/u: breaches of the ack / restore / resolution / update clocks" in table.stdout
    row = next(line for line in table.stdout.splitlines() if "critical" in line and " au " in line)
    assert "0/1/0/0" in row and "1.3 s / 1.3 s" in row and "40 min / 40 min" in row  # one line


async def test_report_html_goes_where_output_says_and_says_where(new_install: str, tmp_path: Path) -> None:
    month = f"{datetime.now(UTC):%Y-%m}"
    here = _cli(new_install, "report", "--format", "html", cwd=tmp_path)
    assert here.returncode == 0, here.stderr
    default = tmp_path / f"sla-report-{month}.html"  # the current directory, a name saying the period
    assert default.is_file() and f"wrote {default}" in here.stdout
    named = tmp_path / "reports" / "november.html"
    named.parent.mkdir()
    there = _cli(new_install, "report", "--format", "html", "--output", str(named))
    assert there.returncode == 0 and named.is_file() and f"wrote {named}" in there.stdout
    folder = _cli(new_install, "report", "--format", "html", "-o", str(named.parent))
    assert folder.returncode == 0 and (named.parent / f"sla-report-{month}.html").is_file()
    nowhere = _cli(new_install, "report", "--format", "html", "-o", str(tmp_path / "missing" / "r.html"))
    assert nowhere.returncode == 1 and "cannot write the HTML report to" in nowhere.stderr
    assert "Traceback" not in nowhere.stderr and len(nowhere.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
async def read_late(postgres: Service) -> str:
    """A critical incident reported at 10:00, acknowledged 10:05, restored 10:20, all read 2 h late."""
    t0 = datetime(2025, 3, 4, 10, 0, tzinfo=UTC)
    events = [
        _event(1, "LATE-1", "reported", t0, severity="critical", region="uk", summary="read late"),
        _event(2, "LATE-1", "acknowledged", t0 + timedelta(minutes=5)),
        _event(3, "LATE-1", "restored", t0 + timedelta(minutes=20)),
    ]
    dsn = await fresh_database(postgres.url)
    await migrate(dsn)
    domain = SlaDomain(PolicyRegistry.load())
    log = record_history(domain, events, t0 + timedelta(hours=3), lag=timedelta(hours=2))
    await write_log(dsn, log)
    return dsn


def _state(dsn: str, *args: str) -> dict[str, Any]:
    run = _cli(dsn, "replay", *args, "--incident", "LATE-1", "--format", "json")
    assert run.returncode == 0, run.stderr
    (state,) = orjson.loads(run.stdout)
    return state


async def test_as_of_is_event_time_and_as_of_processed_processing_time(read_late: str) -> None:
    at_1010 = _state(read_late, "--as-of", "2025-03-04T10:10:00Z")
    assert at_1010["state"] == "acknowledged"
    assert (at_1010["clocks"]["ack"]["status"], at_1010["clocks"]["restore"]["status"]) == ("met", "running")
    assert _state(read_late, "--as-of", "2025-03-04T11:21+01:00")["state"] == "restored"  # 10:21 UTC

    # what the engine had: at 10:10 it had read nothing; at 12:03 only the report
    nothing = _cli(read_late, "replay", "--as-of-processed", "2025-03-04T10:10:00Z", "--incident", "LATE-1")
    assert nothing.returncode == 1 and "by 2025-03-04 10:10:00 UTC" in nothing.stderr, nothing.stderr
    assert _state(read_late, "--as-of-processed", "2025-03-04T12:03")["state"] == "reported"

    table = _cli(read_late, "replay", "--as-of", "2025-03-04T10:10:00Z")
    assert table.returncode == 0 and "as of 2025-03-04 10:10:00 UTC (event time)" in table.stdout
    midnight = _cli(read_late, "replay", "--as-of", "2025-03-04")  # a bare date: midnight UTC
    assert midnight.returncode == 1 and "happened by 2025-03-04 00:00:00 UTC" in midnight.stderr
    both = _cli(read_late, "replay", "--as-of", "2025-03-04", "--as-of-processed", "2025-03-04")
    assert both.returncode == 2 and "choose one of --as-of (event time) and --as-of-processed" in both.stderr

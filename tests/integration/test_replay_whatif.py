"""What-if on a real PostgreSQL log: livepro-1 -> livepro-2 adds exactly the expected failovers for High."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from devstack.stack import Service
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.domain.policy import POLICY_DIR
from incident_engine.reporting.run import what_if
from incident_engine.reporting.seed import seeded_database
from incident_engine.reporting.source import LogScope

pytestmark = pytest.mark.integration

UNTIL = datetime(2025, 3, 12, tzinfo=UTC)


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _history() -> list[dict[str, Any]]:
    """UK incidents in March 2025 (London = UTC, business 08:00-20:00 Mon-Fri)."""
    steps = [
        # high, restored within 30 business minutes: no failover under livepro-2
        ("H1", "reported", "2025-03-05T10:00", {"severity": "high"}),
        ("H1", "acknowledged", "2025-03-05T10:05", {}),
        ("H1", "restored", "2025-03-05T10:20", {}),
        # high, restored after 2 h: livepro-2 breaches restore at 10:30 and orders a failover
        ("H2", "reported", "2025-03-05T10:00", {"severity": "high"}),
        ("H2", "acknowledged", "2025-03-05T10:10", {}),
        ("H2", "restored", "2025-03-05T12:00", {}),
        # high at 19:50 Wed: 10 business minutes that evening, 20 more on Thursday -> due Thu 08:20
        ("H3", "reported", "2025-03-05T19:50", {"severity": "high"}),
        ("H3", "acknowledged", "2025-03-05T19:55", {}),
        ("H3", "restored", "2025-03-06T08:40", {}),
        # high on a Saturday: no business time passes, nothing is due
        ("H4", "reported", "2025-03-08T10:00", {"severity": "high"}),
        ("H4", "restored", "2025-03-08T14:00", {}),
        # high already pinned to livepro-2: the same under both
        ("H5", "reported", "2025-03-05T11:00", {"severity": "high", "policy": "livepro-2"}),
        ("H5", "acknowledged", "2025-03-05T11:05", {}),
        ("H5", "restored", "2025-03-05T13:00", {}),
        # critical and low: identical rules in both policies
        ("C1", "reported", "2025-03-05T10:00", {"severity": "critical"}),
        ("C1", "acknowledged", "2025-03-05T10:20", {}),
        ("C1", "restored", "2025-03-05T11:30", {}),
        ("L1", "reported", "2025-03-05T10:00", {"severity": "low"}),
        ("L1", "acknowledged", "2025-03-05T10:40", {}),
        ("L1", "restored", "2025-03-07T10:00", {}),
    ]
    events = []
    for number, (incident, kind, at, data) in enumerate(steps):
        if kind == "reported":
            data = {"region": "uk", "summary": "payments down", **data}
        events.append({
            "specversion": "1.0", "id": f"wi-{number}", "source": "/channels/test",
            "type": f"incident.{kind}", "subject": incident, "time": _at(at), "data": data,
        })  # fmt: skip
    return events


@pytest.fixture(scope="module")
async def seeded(postgres: Service) -> str:
    """A database with the history's log, written as an on-time engine would have."""
    dsn, _ = await seeded_database(postgres.url, SlaDomain(PolicyRegistry.load()), _history(), UNTIL)
    return dsn


async def test_livepro_2_orders_failovers_for_late_high_incidents_only(seeded: str) -> None:
    registry = PolicyRegistry.load()
    result = await what_if(seeded, SlaDomain(registry), SlaDomain(registry), "livepro-2", LogScope(), UNTIL)
    exhaustive = await what_if(
        seeded, SlaDomain(registry), SlaDomain(registry), "livepro-2", LogScope(), UNTIL, exhaustive=True
    )
    assert exhaustive.to_json() == result.to_json()  # skipping same-rule incidents changes nothing
    assert result.incidents == 7 and result.events == 20
    assert sorted((incident, f.due_at) for incident, f in result.failovers()) == [
        ("H2", _at("2025-03-05T10:30")),
        ("H3", _at("2025-03-06T08:20")),
    ]
    assert result.disappeared["failover"] == 0
    changed = {c.incident_id: c for c in result.changes}
    assert set(changed) <= {"H1", "H2", "H3"}  # critical, low, the weekend and the pinned one: unchanged
    assert {f.label() for f in changed["H2"].appeared} == {
        "warning ack 50%", "warning restore 50%", "warning restore 80%", "breach restore", "failover",
    }  # fmt: skip
    assert [f.label() for f in changed["H1"].appeared] == ["warning restore 50%"]  # 15 min, restored at 20


async def test_same_policy_shows_no_difference(seeded: str) -> None:
    registry = PolicyRegistry.load()
    domain = SlaDomain(registry)
    same = await what_if(seeded, domain, SlaDomain(registry), "livepro-1", LogScope(), UNTIL, exhaustive=True)
    # Every incident ran under livepro-1 but H5 (pinned to livepro-2): only H5 may change, and it
    # loses its failover. With the pinned policies kept, nothing at all changes.
    assert [c.incident_id for c in same.changes] == ["H5"]
    assert [f.label() for f in same.changes[0].disappeared if f.kind == "failover"] == ["failover"]
    scope = LogScope(reported_since=_at("2025-03-05T00:00"), reported_until=_at("2025-03-05T10:30"))
    only_livepro_1 = await what_if(
        seeded, domain, SlaDomain(registry), "livepro-1", scope, UNTIL, exhaustive=True
    )
    assert only_livepro_1.incidents == 4  # H1, H2, C1, L1
    assert only_livepro_1.changes == [] and not only_livepro_1.appeared and not only_livepro_1.disappeared


async def test_cli_what_if_json_and_errors(seeded: str, tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": seeded}

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        command = [sys.executable, "-m", "incident_engine.cli", "replay", *args, "--no-progress"]
        return subprocess.run(command, env=env, capture_output=True, timeout=120)

    run = cli("--policy", "livepro-2", "--until", "2025-03-12", "--format", "json")
    assert run.returncode == 0, run.stderr.decode()
    body = orjson.loads(run.stdout)
    assert body["appeared"]["failover"] == 2 and body["changed_incidents"] == 3
    bad_policy = cli("--policy", "livepro-9")
    assert bad_policy.returncode == 2 and b"unknown policy 'livepro-9'" in bad_policy.stderr
    bad_date = cli("--policy", "livepro-2", "--since", "last tuesday")
    assert bad_date.returncode == 2 and b"not a date or time" in bad_date.stderr
    policy_file = tmp_path / "livepro-2.yaml"  # a policy file works like a name
    policy_file.write_bytes((POLICY_DIR / "livepro-2.yaml").read_bytes())
    from_file = cli("--policy", str(policy_file), "--until", "2025-03-12", "--format", "json")
    assert from_file.returncode == 0, from_file.stderr.decode()
    assert orjson.loads(from_file.stdout)["appeared"] == body["appeared"]


async def test_empty_log_is_a_clear_error(postgres: Service) -> None:
    dsn, _ = await seeded_database(postgres.url, SlaDomain(PolicyRegistry.load()), [], UNTIL)
    env = {**os.environ, "DATABASE_URL": dsn}
    for args in (["--as-of", "2025-03-05"], ["--policy", "livepro-2"]):
        command = [sys.executable, "-m", "incident_engine.cli", "replay", *args, "--no-progress"]
        run = subprocess.run(command, env=env, capture_output=True, timeout=120)
        assert run.returncode == 1 and b"the event log is empty" in run.stderr, run.stderr

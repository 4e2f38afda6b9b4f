"""`replay --as-of` against a live engine: at several instants of a scripted history, the state rebuilt
from the log alone equals what the engine's projections and timer rows held at that instant."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import pytest

from devstack.stack import Service, fresh_database
from incident_engine.domain import Incident, PolicyRegistry, SlaDomain
from incident_engine.entrypoints.app import EngineService
from incident_engine.entrypoints.commands import publish_events
from incident_engine.replay import differences
from incident_engine.reporting.run import state_at, what_if
from incident_engine.reporting.source import LogScope
from tests.integration.engine_helpers import ago, event, settings_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(kafka: Service, postgres: Service) -> AsyncIterator[EngineService]:
    """One engine in this process, on its own database and consumer group."""
    service = EngineService(settings_for(kafka.url, await fresh_database(postgres.url)))
    await service.start()
    await asyncio.wait_for(service.loop.ready.wait(), 30)  # type: ignore[union-attr]
    yield service
    await service.stop()


async def _until(pool: asyncpg.Pool, sql: str, *args: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await pool.fetchval(sql, *args):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {sql} {args}")
        await asyncio.sleep(0.1)


async def _snapshot(pool: asyncpg.Pool, prefix: str) -> tuple[datetime, dict[str, Any], dict[str, datetime]]:
    """The live projections and timer rows of the prefix's incidents, and the instant they held."""
    await asyncio.sleep(0.3)  # let the batch that logged the last step commit everything
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(
            "SELECT incident_id, body FROM incidents WHERE incident_id LIKE $1", prefix + "%"
        )
        timers = await conn.fetch(
            "SELECT incident_id, due_at FROM timers WHERE incident_id LIKE $1", prefix + "%"
        )
        instant = await conn.fetchval("SELECT clock_timestamp()")
    bodies = {
        r["incident_id"]: r["body"] if isinstance(r["body"], dict) else orjson.loads(r["body"]) for r in rows
    }
    return instant, bodies, {r["incident_id"]: r["due_at"] for r in timers}


async def test_as_of_matches_the_live_engine_at_several_instants(
    engine: EngineService, kafka: Service
) -> None:
    assert engine.pool is not None
    pool, p = engine.pool, f"asof-{uuid.uuid4().hex[:6]}-"
    crit, high, low = p + "crit", p + "high", p + "low"
    logged = "SELECT count(*) >= $2 FROM event_log WHERE incident_id LIKE $1"
    snapshots = []

    # 1. critical reported 14m50s ago: its overdue ack warnings fire at once, its ack breach and restore
    #    50% warning come due ~10 s later (the breach after the grace), every one fired by the engine's
    #    timer heap (recorded firings); the others fire their overdue timers at once too.
    await publish_events(kafka.url, [
        event("reported", crit, ago(minutes=14, seconds=50), severity="critical", region="uk"),
        event("reported", high, ago(minutes=20), severity="high", region="us"),
        event("reported", low, ago(hours=3), severity="low", region="au"),
    ])  # fmt: skip
    await _until(pool, logged, p + "%", 3)
    snapshots.append(await _snapshot(pool, p))  # before the timer fired
    breached = "SELECT body->'clocks'->'ack'->>'status' = 'breached' FROM incidents WHERE incident_id = $1"
    await _until(pool, breached, crit, timeout=30)
    snapshots.append(await _snapshot(pool, p))
    # 2. acknowledgements (and an update for the low one, which starts its update clock)
    await publish_events(kafka.url, [
        event("acknowledged", crit), event("investigating", high),
        event("acknowledged", low), event("updated", low, note="digging"),
    ])  # fmt: skip
    await _until(pool, logged, p + "%", 7)
    snapshots.append(await _snapshot(pool, p))
    # 3. the critical fails over, the high one is restored
    await publish_events(kafka.url, [event("failed_over", crit, site="dc2"), event("restored", high)])
    await _until(pool, logged, p + "%", 9)
    snapshots.append(await _snapshot(pool, p))

    domain = SlaDomain(PolicyRegistry.load(engine.settings.incidents_policy_dir))
    dsn = engine.settings.database_url.get_secret_value()
    states = []
    for instant, bodies, timers in snapshots:
        state, _ = await state_at(dsn, domain, LogScope(processed_until=instant))
        mine = {i: inc for i, inc in state.incidents.items() if i.startswith(p)}
        assert set(mine) == {crit, high, low}
        assert differences(mine, bodies, timers) == [], f"as of {instant}"
        states.append(mine)
    assert states[0][crit].clocks["ack"].status == "running"  # the breach had not fired yet
    assert states[1][crit].clocks["ack"].status == "breached"
    assert [s[high].state for s in states] == ["reported", "reported", "investigating", "restored"]

    # The CLI gives the same state as JSON, for one incident.
    env = {**os.environ, "DATABASE_URL": dsn}
    command = [sys.executable, "-m", "incident_engine.cli", "replay", "--incident", crit, "--format", "json",
               "--as-of-processed", snapshots[2][0].isoformat(), "--no-progress"]  # fmt: skip
    run = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode()
    (shown,) = orjson.loads(run.stdout)
    shown_timers = shown["timers"]
    assert all(t.pop("overdue") is False for t in shown_timers)
    assert Incident.from_json(shown).to_json() == states[2][crit].to_json()

    # A what-if under the policy they all ran under changes nothing.
    shadow = SlaDomain(domain.policies)
    same = await what_if(dsn, domain, shadow, "livepro-1", LogScope(), datetime.now(UTC), exhaustive=True)
    assert [c for c in same.changes if c.incident_id.startswith(p)] == []

"""A zombie replica writes nothing: SIGSTOPped past the session timeout, it wakes up to a stale epoch.

Engine A is frozen while it owns partitions whose incidents have an ack timer due soon; engine B
takes the partitions over and processes the acknowledgements in time; A is resumed after the due
moment, with those timers still in its heap. Without fencing, A's timer-only batch (no offsets to
check) commits a false ack breach and rolls the projection back, after which the incident fails its
next event on the (incident_id, seq) key forever.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from devstack.engine import spawn_engine
from devstack.stack import Service, fresh_database
from incident_engine.entrypoints.commands import publish_events
from tests.integration.engine_helpers import (
    OutputCollector,
    ago,
    event,
    settings_for,
    start_at_end,
    wait_ready,
)

pytestmark = pytest.mark.integration

_SESSION_TIMEOUT_MS = 6000
_LEAD = 45.0  # seconds from the reports to their ack due moment: takeover and acks fit before it


async def _partitions(client: httpx.AsyncClient, port: int) -> list[int]:
    try:
        return list((await client.get(f"http://127.0.0.1:{port}/readyz")).json().get("partitions", []))
    except httpx.HTTPError:
        return []


async def _wait_partitions(ports: list[int], check: object, timeout: float, what: str) -> list[list[int]]:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as client:
        while True:
            owned = [await _partitions(client, port) for port in ports]
            if check(owned):  # type: ignore[operator]
                return owned
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {owned}")
            await asyncio.sleep(0.3)


async def _zombie_case(kafka: Service, postgres: Service, logs: Path, incidents: int) -> None:
    prefix = f"zombie-{uuid.uuid4().hex[:5]}-"
    dsn = await fresh_database(postgres.url)
    settings = settings_for(kafka.url, dsn)
    group = settings.incidents_consumer_group
    await start_at_end(kafka.url, dsn, group)
    env = {"INCIDENTS_SESSION_TIMEOUT_MS": str(_SESSION_TIMEOUT_MS)}
    procs: list[subprocess.Popen[bytes]] = []
    a, port_a = spawn_engine(kafka.url, dsn, group, logs / "a.log", **env)
    procs.append(a)
    b, port_b = spawn_engine(kafka.url, dsn, group, logs / "b.log", **env)
    procs.append(b)
    conn = await asyncpg.connect(dsn)
    try:
        await asyncio.gather(wait_ready(port_a, a, 120), wait_ready(port_b, b, 120))
        owned = await _wait_partitions(
            [port_a, port_b], lambda o: all(o) and sorted(o[0] + o[1]) == list(range(6)), 60, "a split"
        )
        ids = [f"{prefix}{i:03d}" for i in range(incidents)]
        reported_at = ago(minutes=15, seconds=-_LEAD)  # ack (15 min, critical) due _LEAD s from now
        due = time.monotonic() + _LEAD
        async with OutputCollector(kafka.url, prefix) as out:
            await publish_events(
                kafka.url, [event("reported", i, reported_at, severity="critical", region="uk") for i in ids]
            )
            await out.wait_for(lambda: len(out.of("incident.state.changed")) >= incidents, 30, "reports")
            rows = await conn.fetch("SELECT incident_id, kafka_partition FROM incidents")
            on_a = {r["incident_id"] for r in rows if r["kafka_partition"] in owned[0]}
            assert on_a, "no incident landed on the replica to freeze"
            a.send_signal(signal.SIGSTOP)  # A keeps its partitions' ack timers in its heap
            await _wait_partitions([port_b], lambda o: o[0] == list(range(6)), 60, "B taking over")
            await publish_events(kafka.url, [event("acknowledged", i) for i in ids])
            await out.wait_for(
                lambda: len(out.of("incident.state.changed", to="acknowledged")) >= incidents,
                max(1.0, due - time.monotonic() - 2),
                "every acknowledgement, in time",
            )
            await asyncio.sleep(max(0.0, due - time.monotonic()) + 2)  # A's timers are due now
            a.send_signal(signal.SIGCONT)
            # A fires what its heap holds, learns from Kafka that it was kicked out, and rejoins.
            await _wait_partitions(
                [port_a, port_b],
                lambda o: all(o) and sorted(o[0] + o[1]) == list(range(6)),
                90,
                "both replicas sharing the partitions again",
            )
            await asyncio.sleep(2)
            stale = await conn.fetch(
                "SELECT incident_id, state, seq FROM incidents WHERE state <> 'acknowledged' OR seq <> 2"
            )
            assert not stale, f"projections rolled back: {[tuple(r) for r in stale][:5]}"
            await publish_events(kafka.url, [event("restored", i) for i in ids])
            await out.wait_for(
                lambda: len(out.of("incident.state.changed", to="restored")) >= incidents,
                60,
                "every restore (no incident stuck on its seq)",
            )
            await asyncio.sleep(1.5)  # any late re-send or false breach of the zombie
            false_breaches = out.of("incident.sla.breached", clock="ack")
            assert not false_breaches, f"false ack breaches: {[o['subject'] for o in false_breaches]}"
            assert not out.of("incident.rejected"), [o["data"]["detail"] for o in out.of("incident.rejected")]
        logged = await conn.fetchval("SELECT count(*) FROM event_log WHERE incident_id LIKE $1", prefix + "%")
        assert logged == 3 * incidents
    finally:
        await conn.close()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(30)


async def test_a_frozen_replica_writes_nothing_once_its_partitions_moved(
    kafka: Service, postgres: Service, tmp_path: Path
) -> None:
    await _zombie_case(kafka, postgres, tmp_path, incidents=24)


@pytest.mark.slow
async def test_a_frozen_replica_at_scale(kafka: Service, postgres: Service, tmp_path: Path) -> None:
    await _zombie_case(kafka, postgres, tmp_path, incidents=600)

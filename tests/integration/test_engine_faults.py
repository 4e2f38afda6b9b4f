"""Crashes and restarts lose nothing and duplicate nothing: SIGKILLed engines, rebalances, server restarts."""

from __future__ import annotations

import asyncio
import random
import signal
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from devstack.kafka import KafkaCluster
from devstack.postgres import LocalPostgres
from devstack.stack import Service, _scratch, fresh_database
from incident_engine.entrypoints.app import EngineService
from incident_engine.entrypoints.commands import publish_events
from tests.integration.engine_helpers import (
    OutputCollector,
    ago,
    engine_process,
    event,
    settings_for,
    start_at_end,
    wait_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _script(prefix: str, incidents: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Critical incidents reported an hour ago (every ack/restore breach and failover is overdue);
    half acknowledged, all restored later. Returns (first wave, second wave)."""
    first, second = [], []
    for i in range(incidents):
        incident = f"{prefix}{i:04d}"
        first.append(
            event(
                "reported",
                incident,
                ago(hours=1),
                severity="critical",
                region=random.choice(["au", "us", "uk"]),
            )
        )
        if i % 2 == 0:
            first.append(event("acknowledged", incident))
        second.append(event("restored", incident))
    return first, second


def _breach_key(out: dict[str, Any]) -> tuple[str, str, str]:
    return out["subject"], out["type"], out["data"].get("clock", "")


def _assert_each_breach_once(outputs: list[dict[str, Any]], incidents: int, prefix: str) -> None:
    ids_by_breach: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for out in outputs:
        if out["type"] in ("incident.sla.breached", "incident.failover.required"):
            ids_by_breach[_breach_key(out)].add(out["id"])
    expected = {
        (f"{prefix}{i:04d}", kind, clock)
        for i in range(incidents)
        for kind, clock in (("incident.sla.breached", "ack"), ("incident.sla.breached", "restore"),
                            ("incident.failover.required", ""))
    }  # fmt: skip
    assert set(ids_by_breach) == expected, f"missing: {sorted(expected - set(ids_by_breach))[:5]}"
    doubled = {k: v for k, v in ids_by_breach.items() if len(v) > 1}
    assert not doubled, f"one breach emitted under several ids: {list(doubled.items())[:3]}"


async def _log_counts(dsn: str, prefix: str) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM event_log WHERE incident_id LIKE $1",
            prefix + "%",
        )
    finally:
        await conn.close()
    assert row is not None
    return row["n"], row["d"]


@pytest.fixture
def logs(tmp_path: Path) -> Iterator[Path]:
    """Where engine processes write; printed when a test fails."""
    yield tmp_path


async def test_sigkilled_engine_loses_and_duplicates_nothing(
    kafka: Service, postgres: Service, logs: Path
) -> None:
    prefix = f"kill-{uuid.uuid4().hex[:5]}-"
    incidents = 150
    dsn = await fresh_database(postgres.url)
    settings = settings_for(kafka.url, dsn)
    first, second = _script(prefix, incidents)
    events = first + second
    proc, port = engine_process(settings, logs / "engine.log")
    async with OutputCollector(kafka.url, prefix) as out:
        try:
            await wait_ready(port, proc)
            chunks = [events[i : i + 25] for i in range(0, len(events), 25)]
            kills = sorted(random.sample(range(1, len(chunks)), 3))
            for n, chunk in enumerate(chunks):
                await publish_events(kafka.url, chunk)
                await asyncio.sleep(random.uniform(0.05, 0.3))
                if n in kills:
                    proc.send_signal(
                        signal.SIGKILL
                    )  # no goodbye: mid-batch, mid-relay, whatever it was doing
                    proc.wait()
                    proc, port = engine_process(settings, logs / "engine.log")
                    await wait_ready(port, proc)
            await out.wait_for(
                lambda: len(out.of("incident.state.changed", to="restored")) >= incidents, 90, "every restore"
            )
            await out.wait_for(
                lambda: len(out.of("incident.failover.required")) >= incidents, 30, "failovers"
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        await asyncio.sleep(1.0)  # stragglers re-sent by the relay after the last kill
    total, distinct = await _log_counts(dsn, prefix)
    assert total == distinct == len(events)  # every accepted event exactly once
    _assert_each_breach_once(out.events, incidents, prefix)
    transitions = defaultdict(set)
    for s in out.of("incident.state.changed"):
        transitions[s["data"]["cause"]].add(s["id"])
    assert len(transitions) == len(events) and all(len(ids) == 1 for ids in transitions.values())


async def test_second_engine_takes_over_partitions_and_fires_their_timers(
    kafka: Service, postgres: Service, logs: Path
) -> None:
    prefix = f"pair-{uuid.uuid4().hex[:5]}-"
    dsn = await fresh_database(postgres.url)
    settings = settings_for(kafka.url, dsn)
    a, port_a = engine_process(settings, logs / "a.log")
    b, port_b = engine_process(settings, logs / "b.log")
    try:
        await asyncio.gather(wait_ready(port_a, a), wait_ready(port_b, b))
        import httpx

        async with httpx.AsyncClient() as client:
            for _ in range(100):  # both joined: the 6 partitions are split between them
                parts = [(await client.get(f"http://127.0.0.1:{p}/readyz")).json() for p in (port_a, port_b)]
                if all(x.get("partitions") for x in parts):
                    break
                await asyncio.sleep(0.3)
        assert sorted(parts[0]["partitions"] + parts[1]["partitions"]) == list(range(6))
        # Ack breaches due ~12 s from now, i.e. after engine A is gone.
        reports = [
            event(
                "reported", f"{prefix}{i:02d}", ago(minutes=14, seconds=48), severity="critical", region="uk"
            )
            for i in range(30)
        ]
        async with OutputCollector(kafka.url, prefix) as out:
            await publish_events(kafka.url, reports)
            await out.wait_for(lambda: len(out.of("incident.state.changed")) == 30, 30, "30 reports")
            a.send_signal(signal.SIGKILL)
            a.wait()
            await out.wait_for(
                lambda: len({o["subject"] for o in out.of("incident.sla.breached", clock="ack")}) == 30,
                60,
                "every ack breach, including those of the killed engine's partitions",
            )
        ids = defaultdict(set)
        for o in out.of("incident.sla.breached", clock="ack"):
            ids[o["subject"]].add(o["id"])
        assert all(len(v) == 1 for v in ids.values())
    finally:
        for proc in (a, b):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)


async def test_broker_and_postgres_restarts_are_survived(postgres: Service) -> None:
    prefix = f"restart-{uuid.uuid4().hex[:5]}-"
    cluster = KafkaCluster.create(_scratch("kafka-restart"), size=1)
    await asyncio.to_thread(cluster.start)
    pg = LocalPostgres.create(_scratch("pg-restart") / "data")
    await asyncio.to_thread(pg.start)
    service = EngineService(settings_for(cluster.bootstrap_servers, pg.dsn))
    incidents = 60
    first, second = _script(prefix, incidents)
    try:
        await service.start()
        await asyncio.wait_for(service.loop.ready.wait(), 30)  # type: ignore[union-attr]
        async with OutputCollector(cluster.bootstrap_servers, prefix) as out:
            await publish_events(cluster.bootstrap_servers, first[: len(first) // 2])
            await asyncio.to_thread(cluster.stop_node, 1)
            await asyncio.sleep(2)
            await asyncio.to_thread(cluster.start_node, 1)
            await publish_events(cluster.bootstrap_servers, first[len(first) // 2 :])
            await asyncio.to_thread(pg.stop)  # fast shutdown: connections die mid-stream
            await asyncio.sleep(2)
            await asyncio.to_thread(pg.start)
            await publish_events(cluster.bootstrap_servers, second)
            await out.wait_for(
                lambda: len(out.of("incident.state.changed", to="restored")) >= incidents,
                120,
                "every restore",
            )
            await out.wait_for(
                lambda: len(out.of("incident.failover.required")) >= incidents, 30, "failovers"
            )
        total, distinct = await _log_counts(pg.dsn, prefix)
        assert total == distinct == len(first) + len(second)
        _assert_each_breach_once(out.events, incidents, prefix)
    finally:
        await service.stop()
        await asyncio.to_thread(cluster.stop)
        await asyncio.to_thread(pg.stop)


async def test_sigterm_finishes_the_batch_and_flushes_the_outbox(
    kafka: Service, postgres: Service, logs: Path
) -> None:
    prefix = f"term-{uuid.uuid4().hex[:5]}-"
    dsn = await fresh_database(postgres.url)
    settings = settings_for(kafka.url, dsn)
    await start_at_end(kafka.url, dsn, settings.incidents_consumer_group)  # only this test's events
    first, second = _script(prefix, 400)
    proc, port = engine_process(settings, logs / "engine.log")
    conn = await asyncpg.connect(dsn)
    try:
        await wait_ready(port, proc)

        async def trickle(events: list[dict[str, Any]]) -> None:  # a stream lasting a few seconds
            for i in range(0, len(events), 50):
                await publish_events(kafka.url, events[i : i + 50])
                await asyncio.sleep(0.1)

        stream = asyncio.create_task(trickle(first + second))
        for _ in range(200):  # terminate mid-stream, once the engine has committed something
            if await conn.fetchval("SELECT count(*) FROM event_log") > 0:
                break
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
        await stream
        # uvicorn re-raises the signal once the graceful shutdown is done, so the exit is "by SIGTERM"
        log = (logs / "engine.log").read_text()
        assert code in (0, -signal.SIGTERM), log[-2000:]
        assert "Application shutdown complete" in log
        backlog = await conn.fetchval("SELECT count(*) FROM outbox")
        consumed = await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets")
        logged = await conn.fetchval("SELECT count(*) FROM event_log WHERE incident_id LIKE $1", prefix + "%")
    finally:
        await conn.close()
        if proc.poll() is None:
            proc.kill()
    assert backlog == 0, "outputs of committed batches were left unsent"
    assert 0 < logged < len(first + second), "stopped mid-stream, with what it had committed"
    assert consumed > 0

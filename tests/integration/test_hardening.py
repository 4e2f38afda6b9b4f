"""Hardening against real Kafka and PostgreSQL: a message PostgreSQL refuses does not stop its
partition, a failed partition assignment is retaken, no PostgreSQL call can hang forever."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from devstack.stack import Service, fresh_database
from incident_contracts import TOPIC_EVENTS
from incident_engine.adapters.postgres.store import PostgresStore
from incident_engine.adapters.store import BatchWrite, TimerRow
from incident_engine.entrypoints import app as app_module
from incident_engine.entrypoints.app import EngineService, wait_for_postgres
from incident_engine.entrypoints.isolation import is_infrastructure
from tests.integration.engine_helpers import OutputCollector, event, settings_for, start_at_end

pytestmark = pytest.mark.integration

POISON_SUFFIX = "-poison"


class RefusingStore(PostgresStore):
    """The real store, except that the events of incidents named `*-poison` carry a NUL into the
    event log: PostgreSQL itself refuses them (whatever the contract lets through in this branch)."""

    async def commit(self, batch: BatchWrite, after: Awaitable[object] | None = None) -> None:
        for logged in batch.events:
            if logged.incident_id.endswith(POISON_SUFFIX):
                logged.source += "\x00"
        await super().commit(batch, after=after)


class FlakyTimerStore(PostgresStore):
    """The real store, whose timers do not load until `healthy` is set."""

    healthy = asyncio.Event()
    failures = 0

    async def load_timers(self, partitions: list[int]) -> list[TimerRow]:
        if not FlakyTimerStore.healthy.is_set():
            FlakyTimerStore.failures += 1
            raise asyncpg.exceptions.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation"
            )
        return await super().load_timers(partitions)


def _count(outputs: list[dict[str, Any]]) -> int:
    """Distinct outputs (delivery is at least once: a rare re-send carries the same id)."""
    return len({o["id"] for o in outputs})


async def _engine(kafka: Service, postgres: Service, **extra: Any) -> tuple[EngineService, str]:
    dsn = await fresh_database(postgres.url)
    settings = settings_for(kafka.url, dsn, **extra)
    await start_at_end(kafka.url, dsn, settings.incidents_consumer_group)
    return EngineService(settings), dsn


@pytest.fixture
async def refusing_engine(
    kafka: Service, postgres: Service, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[EngineService]:
    monkeypatch.setattr(app_module, "PostgresStore", RefusingStore)
    service, _ = await _engine(kafka, postgres)
    await service.start()
    await asyncio.wait_for(service.loop.ready.wait(), 30)  # type: ignore[union-attr]
    yield service
    await service.stop()


async def test_a_message_postgres_refuses_is_dead_lettered_and_its_partition_flows_on(
    refusing_engine: EngineService, kafka: Service
) -> None:
    p = f"refused-{uuid.uuid4().hex[:6]}-"
    poison, before, after = p + "x" + POISON_SUFFIX, p + "before", p + "after"
    first = [
        event("reported", before, severity="high", region="uk"),
        event("reported", poison, severity="high", region="uk"),
        event("acknowledged", before),
    ]
    later = [event("reported", after, severity="low", region="au"), event("restored", before)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka.url)
    await producer.start()

    async def send(events: list[dict[str, Any]]) -> None:
        for e in events:  # one partition for all: the culprit sits between the others
            await producer.send_and_wait(
                TOPIC_EVENTS, orjson.dumps(e), key=e["subject"].encode(), partition=0
            )

    try:
        async with OutputCollector(kafka.url, p) as out:
            await send(first)
            started = time.monotonic()
            await out.wait_for(
                lambda: _count(out.of("incident.rejected", poison)) == 1, 30, "the dead letter"
            )
            await out.wait_for(lambda: _count(out.of("incident.state.changed", before)) == 2, 15, "the ack")
            await send(later)
            await out.wait_for(
                lambda: (
                    _count(out.of("incident.state.changed", after)) == 1
                    and _count(out.of("incident.state.changed", before)) == 3
                ),
                15,
                "later events of the partition",
            )
            assert time.monotonic() - started < 30
            dead = out.of("incident.rejected", poison)[0]
            assert dead["data"]["reason"] == "unprocessable"
            assert "CharacterNotInRepertoireError" in dead["data"]["detail"]
            assert orjson.loads(dead["data"]["original"]) == first[1]
            assert out.of("incident.rejected", before) == [] and out.of("incident.rejected", after) == []
    finally:
        await producer.stop()
    assert refusing_engine.pool is not None
    logged = await refusing_engine.pool.fetch(
        "SELECT incident_id, seq FROM event_log WHERE incident_id LIKE $1 ORDER BY 1, 2", p + "%"
    )
    assert [tuple(r) for r in logged] == [(after, 1), (before, 1), (before, 2), (before, 3)]
    assert refusing_engine.telemetry is not None
    metrics = refusing_engine.telemetry.metrics_text()[0].decode()
    unprocessable = re.search(r'^incidents_rejections_total\{reason="unprocessable"\} (\S+)$', metrics, re.M)
    assert unprocessable is not None and float(unprocessable.group(1)) >= 1  # the series starts at 0


async def test_the_nul_incident_of_the_issue_does_not_stop_its_partition(
    refusing_engine: EngineService, kafka: Service
) -> None:
    """Issue 11's message (`"subject": "INC-7\\u0000x"`): whether the contract refuses it (`schema`)
    or PostgreSQL does (`unprocessable`), it is dead-lettered and the partition flows on."""
    p = f"nul-{uuid.uuid4().hex[:6]}-"
    nul, ok = p + "INC-7\x00x", p + "ok"
    poison = event("reported", p + "INC-7", severity="critical", region="au")  # valid, then the NUL
    poison["subject"] = nul  # as a misbehaving channel sends it (`build_event` refuses it)
    messages = [
        poison,
        event("reported", ok, severity="low", region="uk"),
        event("acknowledged", ok),
    ]
    producer = AIOKafkaProducer(bootstrap_servers=kafka.url)
    await producer.start()
    try:
        async with OutputCollector(kafka.url, p) as out:
            for e in messages:
                key = e["subject"].encode()
                await producer.send_and_wait(TOPIC_EVENTS, orjson.dumps(e), key=key, partition=1)
            await out.wait_for(
                lambda: (
                    _count(out.of("incident.state.changed", ok)) == 2
                    and _count(out.of("incident.rejected", nul)) == 1
                ),
                30,
                "the dead letter and the later events",
            )
            dead = out.of("incident.rejected", nul)[0]
            assert dead["data"]["reason"] in ("schema", "unprocessable")
            assert orjson.loads(dead["data"]["original"]) == messages[0]
    finally:
        await producer.stop()


async def test_a_failed_assignment_is_retaken_and_not_ready_until_its_timers_load(
    kafka: Service, postgres: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "PostgresStore", FlakyTimerStore)
    FlakyTimerStore.healthy = asyncio.Event()
    FlakyTimerStore.failures = 0
    service, dsn = await _engine(kafka, postgres)
    incident = f"armed-{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO timers (incident_id, kafka_partition, due_at) VALUES ($1, 0, $2)",
            incident,
            datetime.now(UTC) + timedelta(hours=1),
        )
    finally:
        await conn.close()
    await service.start()
    try:
        deadline = time.monotonic() + 30
        while FlakyTimerStore.failures < 2:  # the assignment's load, then the loop's retry
            assert time.monotonic() < deadline, "the partitions were never assigned"
            await asyncio.sleep(0.05)
        assert service.ready()["ready"] is False
        assert (await service.readiness())["ready"] is False  # what GET /readyz answers (503)
        assert service.loop is not None and len(service.loop.timers) == 0
        FlakyTimerStore.healthy.set()
        await asyncio.wait_for(service.loop.ready.wait(), 15)
        assert service.ready()["ready"] is True
        deadline = time.monotonic() + 15
        while not (await service.readiness())["ready"]:  # Kafka's answer comes from the lag probe
            assert time.monotonic() < deadline, await service.readiness()
            await asyncio.sleep(0.2)
        assert len(service.loop.timers) == 1  # the timer row is armed
    finally:
        await service.stop()


async def test_a_batch_commits_the_states_it_decided_while_the_next_one_is_decided(postgres: Service) -> None:
    """Commit of batch N overlaps the decision of N+1, which changes the same (cached) incidents in
    place: N must still write the states it decided, or a failed N+1 leaves the projection ahead of
    the log (its events, redone, were then refused as duplicates)."""
    from incident_engine.adapters.postgres.migrate import migrate
    from incident_engine.adapters.postgres.store import create_pool
    from incident_engine.domain import PolicyRegistry, SlaDomain
    from incident_engine.entrypoints.processor import BatchProcessor
    from tests.unit.test_processor import Record

    dsn = await fresh_database(postgres.url)
    await migrate(dsn)
    pool = await create_pool(dsn)
    try:
        processor = BatchProcessor(SlaDomain(PolicyRegistry.load()), PostgresStore(pool), "g")
        now = datetime.now(UTC)
        changes = [event("reported", "X", now, severity="high", region="uk"), event("acknowledged", "X", now)]
        first, second = (Record(n, orjson.dumps(e), b"X") for n, e in enumerate(changes))
        decided = await processor.decide([first], [], now)
        committing = asyncio.create_task(processor.commit(decided))
        await asyncio.sleep(0)  # the loop lets the commit start, then decides on (EngineLoop.step)
        await processor.decide([second], [], now)  # overlaps the commit (X cached: no await in it)
        await committing
        row = await pool.fetchrow("SELECT state, seq, body FROM incidents WHERE incident_id = 'X'")
        assert (row["state"], row["seq"], row["body"]["state"]) == ("reported", 1, "reported")
    finally:
        await pool.close()


async def test_no_postgres_call_can_hang(postgres: Service) -> None:
    dsn = await fresh_database(postgres.url)
    defaults = settings_for("127.0.0.1:1", dsn)
    pool = await wait_for_postgres(dsn, settings=defaults)
    try:
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW statement_timeout") == "25s"
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "1min"
    finally:
        await pool.close()

    server_side = settings_for("127.0.0.1:1", dsn, incidents_pg_statement_timeout_ms=200)
    pool = await wait_for_postgres(dsn, settings=server_side)
    try:
        with pytest.raises(asyncpg.exceptions.QueryCanceledError) as cancelled:
            await pool.fetchval("SELECT pg_sleep(5)")
        assert is_infrastructure(cancelled.value)  # retried, never dead-letters a message
    finally:
        await pool.close()

    # a connection that stops answering (as a half-open one does): the client gives up by itself
    client_side = settings_for(
        "127.0.0.1:1", dsn, incidents_pg_statement_timeout_ms=0, incidents_pg_command_timeout_ms=300
    )
    pool = await wait_for_postgres(dsn, settings=client_side)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError) as timed_out:
            await pool.fetchval("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 3 and is_infrastructure(timed_out.value)
    finally:
        await pool.close()


async def test_values_postgres_or_asyncpg_refuse_are_the_inputs_fault(postgres: Service) -> None:
    dsn = await fresh_database(postgres.url)
    conn = await asyncpg.connect(dsn)
    try:
        for query, value in [
            ("SELECT $1::text", "INC-7\x00x"),  # refused by the server (22021)
            ("SELECT $1::int", 2**40),  # refused by asyncpg before sending (its client-side DataError)
            ("SELECT $1::text::numeric", "NaN-ish"),  # 22P02
        ]:
            with pytest.raises(Exception) as refused:
                await conn.fetchval(query, value)
            assert not is_infrastructure(refused.value), (query, refused.value)
    finally:
        await conn.close()

"""The engine end to end against the real Kafka and PostgreSQL: transitions, timers, dead letters."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from devstack.stack import Service, fresh_database
from incident_contracts import TOPIC_EVENTS
from incident_engine.entrypoints.app import EngineService
from incident_engine.entrypoints.commands import publish_events, replay_check
from tests.integration.engine_helpers import OutputCollector, ago, event, settings_for, start_at_end

pytestmark = pytest.mark.integration


@pytest.fixture
async def engine(kafka: Service, postgres: Service) -> AsyncIterator[EngineService]:
    """One engine in this process, on its own database and consumer group."""
    dsn = await fresh_database(postgres.url)
    settings = settings_for(kafka.url, dsn, incidents_max_message_bytes=64 * 1024)
    # only this test's events: earlier tests (and other modules) published to the same topic
    await start_at_end(kafka.url, dsn, settings.incidents_consumer_group)
    service = EngineService(settings)
    await service.start()
    await asyncio.wait_for(service.loop.ready.wait(), 30)  # type: ignore[union-attr]
    yield service
    await service.stop()


async def test_lifecycle_breaches_and_rejections_flow_end_to_end(
    engine: EngineService, kafka: Service
) -> None:
    p = f"e2e-{uuid.uuid4().hex[:6]}-"
    live, old, dup = p + "live", p + "old", p + "dup"
    async with OutputCollector(kafka.url, p) as out:
        await publish_events(kafka.url, [
            # critical, reported 14m57s ago: the ack breach is due in ~3 s and must fire from a timer
            event("reported", live, ago(minutes=14, seconds=57), severity="critical", region="uk"),
            # reported 2 hours ago: every ack/restore warning, breach and the failover are overdue
            event("reported", old, ago(hours=2), severity="critical", region="us"),
            event("reported", dup, severity="low", region="au"),
            event("acknowledged", dup),
        ])  # fmt: skip
        await out.wait_for(
            lambda: len(out.of("incident.failover.required", old)) == 1, what="overdue failover"
        )
        due_before = out.of("incident.sla.breached", live)
        assert due_before == [] or due_before[0]["data"]["clock"] == "ack"
        await out.wait_for(
            lambda: len(out.of("incident.sla.breached", live, clock="ack")) == 1, 15, "timer breach"
        )

        second_ack = event("acknowledged", dup)
        await publish_events(kafka.url, [
            second_ack,
            event("restored", p + "nobody"),
            event("restored", dup),
            event("investigating", dup),  # after restored: invalid
        ])  # fmt: skip
        await out.wait_for(lambda: len(out.of("incident.rejected")) >= 3, what="rejections")

        breached = out.of("incident.sla.breached", old)
        assert sorted(b["data"]["clock"] for b in breached) == ["ack", "restore"]
        assert all(b["data"]["due_at"] < b["time"] for b in breached)  # true due moment kept
        warnings = out.of("incident.sla.warning", old)
        assert sorted((w["data"]["clock"], w["data"]["threshold"]) for w in warnings) == [
            ("ack", 0.5), ("ack", 0.8), ("restore", 0.5), ("restore", 0.8),
        ]  # fmt: skip
        reasons = {(r["subject"], r["data"]["reason"]) for r in out.of("incident.rejected")}
        assert reasons == {
            (dup, "duplicate"),
            (p + "nobody", "unknown_incident"),
            (dup, "invalid_transition"),
        }
        states = [(s["data"]["from"], s["data"]["to"]) for s in out.of("incident.state.changed", dup)]
        assert states == [(None, "reported"), ("reported", "acknowledged"), ("acknowledged", "restored")]
        assert all(s["_topic"] == "incidents.state" for s in out.of("incident.state.changed"))
        assert len({e["id"] for e in out.events}) == len(out.events), "an output id was published twice"

    assert engine.pool is not None
    logged = await engine.pool.fetchval("SELECT count(*) FROM event_log WHERE incident_id LIKE $1", p + "%")
    assert logged == 5  # 3 reports, 1 ack (the second is a refused duplicate), 1 restore
    events, incidents, problems = await replay_check(
        engine.settings.database_url.get_secret_value(), engine.settings
    )
    assert problems == []
    assert (events, incidents) == (5, 3)


async def test_poison_messages_are_dead_lettered_and_the_partition_keeps_flowing(
    engine: EngineService, kafka: Service
) -> None:
    p = f"poison-{uuid.uuid4().hex[:6]}-"
    good = event("reported", p + "ok", severity="high", region="au")
    wrong_type = {**event("reported", p + "bad", severity="high", region="au"), "type": "incident.exploded"}
    bad_severity = event("reported", p + "sev", severity="high", region="au")
    bad_severity["data"]["severity"] = "apocalyptic"
    producer = AIOKafkaProducer(bootstrap_servers=kafka.url, max_request_size=1_048_576)
    await producer.start()
    try:
        for key, value in [
            (p + "garbage", b"\xff\xfe not json at all"),
            (p + "bad", orjson.dumps(wrong_type)),
            (p + "sev", orjson.dumps(bad_severity)),
            (p + "huge", b'{"pad": "' + b"x" * 200_000 + b'"}'),
            (p + "ok", orjson.dumps(good)),
        ]:
            await producer.send_and_wait(TOPIC_EVENTS, value, key=key.encode())
    finally:
        await producer.stop()
    async with OutputCollector(kafka.url, p) as out:
        await out.wait_for(
            lambda: len(out.of("incident.state.changed", p + "ok")) == 1, what="the good event"
        )
        await out.wait_for(lambda: len(out.of("incident.rejected")) == 4, what="four dead letters")
    by_subject = {r["subject"]: r["data"] for r in out.of("incident.rejected")}
    assert by_subject[p + "garbage"]["reason"] == "decode"
    assert by_subject[p + "garbage"]["original_encoding"] == "base64"
    assert by_subject[p + "bad"]["reason"] == "schema"
    assert by_subject[p + "sev"]["reason"] == "schema" and "severity" in by_subject[p + "sev"]["detail"]
    assert (
        by_subject[p + "huge"]["reason"] == "decode"
        and "exceeds the limit" in by_subject[p + "huge"]["detail"]
    )


async def test_binary_mode_input_is_accepted(engine: EngineService, kafka: Service) -> None:
    incident = f"bin-{uuid.uuid4().hex[:6]}"
    structured = event("reported", incident, severity="low", region="uk")
    headers = [
        (f"ce_{k}", str(v).encode()) for k, v in structured.items() if k not in ("data", "datacontenttype")
    ]
    headers.append(("content-type", b"application/json"))
    producer = AIOKafkaProducer(bootstrap_servers=kafka.url)
    await producer.start()
    try:
        await producer.send_and_wait(TOPIC_EVENTS, orjson.dumps(structured["data"]), key=incident.encode(),
                                     headers=headers)  # fmt: skip
    finally:
        await producer.stop()
    async with OutputCollector(kafka.url, incident) as out:
        await out.wait_for(
            lambda: len(out.of("incident.state.changed", incident)) == 1, what="binary-mode report"
        )
    assert out.of("incident.state.changed", incident)[0]["data"]["severity"] == "low"


async def test_repeated_event_id_is_dropped_silently(engine: EngineService, kafka: Service) -> None:
    incident = f"rep-{uuid.uuid4().hex[:6]}"
    report = event("reported", incident, severity="low", region="us")
    ack = event("acknowledged", incident)
    await publish_events(kafka.url, [report, report, ack, ack])
    async with OutputCollector(kafka.url, incident) as out:
        await out.wait_for(
            lambda: len(out.of("incident.state.changed", incident)) == 2, what="two transitions"
        )
        await asyncio.sleep(1.0)
    assert out.of("incident.rejected") == []
    assert engine.pool is not None
    assert await engine.pool.fetchval("SELECT count(*) FROM event_log WHERE incident_id = $1", incident) == 2


async def test_event_log_is_append_only(engine: EngineService) -> None:
    assert engine.pool is not None
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await engine.pool.execute("DELETE FROM event_log")


async def test_a_restarted_engine_resumes_from_the_offsets_in_postgres(
    kafka: Service, postgres: Service
) -> None:
    """Exactly-once must not lean on id deduplication alone: nothing committed is read again."""
    incident = f"resume-{uuid.uuid4().hex[:6]}"
    settings = settings_for(kafka.url, await fresh_database(postgres.url))
    await start_at_end(kafka.url, settings.database_url.get_secret_value(), settings.incidents_consumer_group)
    first = EngineService(settings)
    await first.start()
    await publish_events(kafka.url, [event("reported", incident, severity="low", region="au")])
    async with OutputCollector(kafka.url, incident) as out:
        await out.wait_for(lambda: len(out.of("incident.state.changed", incident)) == 1)
    await first.stop()
    assert first.store is not None
    from incident_engine.adapters.telemetry import create_telemetry

    telemetry = create_telemetry("resume-test", span_exporters=[])
    second = EngineService(settings, telemetry=telemetry)
    await second.start()
    try:
        await publish_events(kafka.url, [event("acknowledged", incident)])
        async with OutputCollector(kafka.url, incident) as out:
            await out.wait_for(lambda: len(out.of("incident.state.changed", incident)) == 2)
        metrics = telemetry.metrics_text()[0].decode()
    finally:
        await second.stop()
        telemetry.shutdown()
    counted = [line for line in metrics.splitlines() if line.startswith("incidents_events_total{")]
    assert len(counted) == 1 and 'type="incident.acknowledged"' in counted[0], (
        counted
    )  # read only the new one

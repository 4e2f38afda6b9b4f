"""Outputs always fit the topic, on a broker with Kafka's default message size (not the dev stack's).

A dead letter quotes its original only up to a bound; every topic the engine creates says its
`max.message.bytes`; an output the broker refuses anyway (a topic configured smaller) is parked
with the broker's error and the relay goes on with the rest.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from devstack.kafka import KafkaCluster
from devstack.stack import Service, _scratch, fresh_database
from incident_contracts import TOPIC_EVENTS, TOPIC_REJECTED
from incident_engine.entrypoints.app import OUTPUT_TOPICS, EngineService, topic_max_message_bytes
from incident_engine.entrypoints.commands import publish_events
from incident_engine.entrypoints.parked_cli import list_parked, resend_parked
from tests.integration.engine_helpers import OutputCollector, event, settings_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def default_broker() -> AsyncIterator[str]:
    """A single broker with Kafka's default message.max.bytes (about 1 MiB)."""
    cluster = KafkaCluster.create(_scratch("kafka-default-size"), size=1, message_max_bytes=None)
    await asyncio.to_thread(cluster.start)
    try:
        yield cluster.bootstrap_servers
    finally:
        await asyncio.to_thread(cluster.stop)


async def _topic_configs(bootstrap: str, topics: list[str]) -> dict[str, dict[str, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, {"max.message.bytes": None}) for t in topics]
        )
    finally:
        await admin.close()
    found: dict[str, dict[str, str]] = {}
    for response in responses:
        for resource in response.resources:
            found[resource[3]] = {entry[0]: entry[1] for entry in resource[4]}
    return found


async def _set_topic_limit(bootstrap: str, topic: str, limit: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(limit)})]
        )
    finally:
        await admin.close()


async def _publish_raw(bootstrap: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4_000_000)
    await producer.start()
    try:
        await producer.send_and_wait(TOPIC_EVENTS, value, key=key)
    finally:
        await producer.stop()


async def test_outputs_fit_a_default_broker_and_a_refused_one_is_parked(
    default_broker: str, postgres: Service
) -> None:
    prefix = f"size-{uuid.uuid4().hex[:5]}-"
    dsn = await fresh_database(postgres.url)
    settings = settings_for(default_broker, dsn)
    service = EngineService(settings)
    try:
        await service.start()
        await asyncio.wait_for(service.loop.ready.wait(), 60)  # type: ignore[union-attr]
        configs = await _topic_configs(default_broker, [TOPIC_EVENTS, *OUTPUT_TOPICS])
        expected = topic_max_message_bytes(settings)
        assert {t: int(c["max.message.bytes"]) for t, c in configs.items()} == expected
        async with OutputCollector(default_broker, prefix) as out:
            # 1. A dead letter of a large input (every byte doubles when escaped in JSON) fits.
            big = b'"' * 1_000_000
            await _publish_raw(default_broker, f"{prefix}big".encode(), big)
            await publish_events(
                default_broker, [event("reported", f"{prefix}A", severity="low", region="uk")]
            )
            await out.wait_for(
                lambda: bool(out.of("incident.rejected", f"{prefix}big")), 60, "the dead letter"
            )
            await out.wait_for(lambda: bool(out.of("incident.state.changed", f"{prefix}A")), 30, "the report")
            data = out.of("incident.rejected", f"{prefix}big")[0]["data"]
            assert data["original_size"] == len(big) and len(data["original"]) < len(big) // 10
            assert data["original_sha256"] == hashlib.sha256(big).hexdigest()

            # 2. A topic configured smaller than an output: parked, counted; the rest goes on.
            await _set_topic_limit(default_broker, TOPIC_REJECTED, 8192)
            await _publish_raw(default_broker, f"{prefix}huge".encode(), b"x" * 30_000)
            await _publish_raw(default_broker, f"{prefix}small".encode(), b"not json")
            await publish_events(
                default_broker, [event("reported", f"{prefix}B", severity="low", region="uk")]
            )
            await out.wait_for(
                lambda: bool(out.of("incident.rejected", f"{prefix}small")), 60, "the next one"
            )
            await out.wait_for(lambda: bool(out.of("incident.state.changed", f"{prefix}B")), 30, "the report")
            assert not out.of("incident.rejected", f"{prefix}huge")
            conn = await asyncpg.connect(dsn)
            try:
                parked = await conn.fetch(
                    "SELECT topic, key, error, length(payload) AS size FROM outbox_parked"
                )
                for _ in range(100):  # sent rows are deleted by the next batch, or by the relay when idle
                    backlog = await conn.fetchval("SELECT count(*) FROM outbox")
                    if backlog == 0:
                        break
                    await asyncio.sleep(0.1)
            finally:
                await conn.close()
            assert [(r["topic"], r["key"]) for r in parked] == [(TOPIC_REJECTED, f"{prefix}huge".encode())]
            assert "MessageSizeTooLarge" in parked[0]["error"] and parked[0]["size"] > 8192
            assert backlog == 0  # nothing left behind the refused output
            assert service.telemetry is not None
            text = service.telemetry.metrics_text()[0].decode()
            assert 'incidents_outbox_parked_total{topic="incidents.rejected"} 1.0' in text, [
                line for line in text.splitlines() if "parked" in line
            ]

            # 3. The operator raises the limit and re-sends what was parked.
            await _set_topic_limit(default_broker, TOPIC_REJECTED, 1_048_576)
            outcome = await resend_parked(settings)
            assert list(outcome.values()) == [None]
            await out.wait_for(lambda: bool(out.of("incident.rejected", f"{prefix}huge")), 30, "the re-send")
            assert await list_parked(dsn) == []
    finally:
        await service.stop()

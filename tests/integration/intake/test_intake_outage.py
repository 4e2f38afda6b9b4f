"""Kafka down: the intake answers 503 with Retry-After (nothing remembered), and the sender's retry
succeeds once the broker is back, as one event. A private one-node cluster, stopped for real."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from devstack.kafka import KafkaCluster
from devstack.stack import Service, fresh_database
from incident_contracts import TOPIC_EVENTS
from tests.integration.intake.helpers import ensure_events_topic, spawn_intake, stop, wait_http

pytestmark = pytest.mark.integration

ROUTING_KEY = uuid.uuid4().hex


def trigger(dedup: str) -> dict[str, object]:
    return {
        "routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": dedup,
        "payload": {"summary": f"{dedup} is down", "source": "db-1", "severity": "critical"},
    }  # fmt: skip


async def read_all(bootstrap: str) -> list[dict[str, object]]:
    consumer = AIOKafkaConsumer(
        TOPIC_EVENTS, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        events, quiet_since = [], time.monotonic()
        while time.monotonic() - quiet_since < 3:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                events += [orjson.loads(r.value) for r in records]
                quiet_since = time.monotonic()
        return events
    finally:
        await consumer.stop()


async def test_kafka_down_is_503_then_the_retry_succeeds_once(postgres: Service, tmp_path: Path) -> None:
    cluster = KafkaCluster.create(tmp_path / "kafka", size=1)
    await asyncio.to_thread(cluster.start)
    intake = None
    try:
        await ensure_events_topic(cluster.bootstrap_servers)
        dsn = await fresh_database(postgres.url)
        integrations = tmp_path / "integrations.yaml"
        integrations.write_text(
            f"integrations:\n  pd:\n    kind: pagerduty\n    region: au\n    routing_key: {ROUTING_KEY}\n"
        )
        log = tmp_path / "intake.log"
        intake, port = spawn_intake(
            cluster.bootstrap_servers,
            dsn,
            integrations,
            log,
            INTAKE_KAFKA_TIMEOUT_MS="3000",
            INTAKE_RETRY_AFTER_SECONDS="2",
        )
        await wait_http(f"http://127.0.0.1:{port}/readyz", intake, log)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert (await client.post("/v2/enqueue", json=trigger("before"))).status_code == 202

            await asyncio.to_thread(cluster.stop_node, 1)
            down = await client.post("/v2/enqueue", json=trigger("during"))
            assert down.status_code == 503, down.text
            assert down.headers["retry-after"] == "2"
            assert down.json()["status"] == "unavailable" and "retry" in down.json()["message"]
            ready = await client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["kafka"] != "ok"

            await asyncio.to_thread(cluster.start_node, 1)
            deadline, answer = time.monotonic() + 90, down
            while answer.status_code != 202 and time.monotonic() < deadline:  # as a sender retries
                await asyncio.sleep(float(answer.headers.get("retry-after", "1")))
                answer = await client.post("/v2/enqueue", json=trigger("during"))
            assert answer.status_code == 202, answer.text
            again = await client.post("/v2/enqueue", json=trigger("during"))
            assert again.status_code == 202  # a retry of an accepted event: accepted, nothing new
        events = await read_all(cluster.bootstrap_servers)
        by_summary: dict[str, set[str]] = {}
        for event in events:
            by_summary.setdefault(event["data"]["summary"], set()).add(event["id"])  # type: ignore[index]
        # one event each; a copy the producer delivered late after its 503 carries the same id,
        # which the engine drops as the same CloudEvent
        assert {k: len(v) for k, v in by_summary.items()} == {"before is down": 1, "during is down": 1}
    finally:
        if intake is not None:
            stop(intake)
        await asyncio.to_thread(cluster.stop)

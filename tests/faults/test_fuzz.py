"""Fuzzed input through Kafka: every message is processed or dead-lettered with a reason, none blocks."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from devstack.stack import Service, fresh_database
from incident_contracts import TOPIC_EVENTS
from tests.faults.checks import REASONS, Engines, check_outputs, sized
from tests.integration.engine_helpers import OutputCollector, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TYPES = ["reported", "acknowledged", "investigating", "failed_over", "restored", "updated"]
FIELDS = ["specversion", "id", "source", "type", "subject", "time", "datacontenttype", "data"]
leaf = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30),
    st.sampled_from(["critical", "high", "low", "au", "us", "uk", "9999-12-31T23:59:59Z",
                     "0001-01-01T00:00:00Z", "2026-02-30T10:00:00Z", "1.0", "incident.reported", "lp-9"]),
)  # fmt: skip
json_value = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip


def _valid(kind: str) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if kind == "reported":
        data = {"severity": "high", "region": "au", "summary": "fuzz"}
    elif kind == "updated":
        data = {"note": "fuzz"}
    return {"specversion": "1.0", "id": "e", "source": "/channels/fuzz", "type": f"incident.{kind}",
            "subject": "?", "time": datetime.now(UTC).isoformat(), "datacontenttype": "application/json",
            "data": data}  # fmt: skip


@st.composite
def message(draw: st.DrawFn) -> Any:
    """A dict (an event, valid or mutated), raw bytes, or None (a tombstone)."""
    shape = draw(st.sampled_from(["valid", "mutated", "mutated", "data", "removed", "json", "bytes", "none"]))
    if shape == "bytes":
        return draw(st.binary(max_size=300))
    if shape == "none":
        return None
    if shape == "json":
        return draw(json_value)
    body = _valid(draw(st.sampled_from(TYPES)))
    if shape == "mutated":
        body[draw(st.sampled_from(FIELDS))] = draw(json_value)
    elif shape == "data" and isinstance(body["data"], dict):
        body["data"][draw(st.sampled_from(["severity", "region", "summary", "policy", "note", "extra"]))] = (
            draw(leaf)
        )
    elif shape == "removed":
        body.pop(draw(st.sampled_from(FIELDS)))
    return body


def draw_messages(count: int) -> list[Any]:
    """`count` fuzzed messages from hypothesis (generated only: the check runs once, through Kafka)."""
    drawn: list[Any] = []

    @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(message())
    def collect(m: Any) -> None:
        drawn.append(m)

    collect()
    return drawn


def encode(key: str, drawn: Any) -> bytes | None:
    """The Kafka value: events get the key as subject (unless fuzzed) and a unique id (unless fuzzed)."""
    if drawn is None or isinstance(drawn, bytes):
        return drawn
    if isinstance(drawn, dict) and drawn.get("subject") == "?":
        drawn["subject"] = key
    if isinstance(drawn, dict) and isinstance(drawn.get("id"), str):
        drawn["id"] = f"{key}/{drawn['id']}"  # a fuzzed id must not repeat another message's id
    return json.dumps(drawn).encode()  # stdlib: also big integers and Infinity (invalid JSON)


async def test_fuzzed_input_is_processed_or_dead_lettered(
    kafka: Service, postgres: Service, tmp_path: Path
) -> None:
    prefix = f"fz-{uuid.uuid4().hex[:5]}-"
    drawn = draw_messages(sized(300, 3000))
    messages = [(f"{prefix}{i:05d}", encode(f"{prefix}{i:05d}", m)) for i, m in enumerate(drawn)]
    dsn = await fresh_database(postgres.url)
    engines = Engines(settings_for(kafka.url, dsn), tmp_path)
    async with OutputCollector(kafka.url, prefix) as out:
        try:
            await engines.start()
            producer = AIOKafkaProducer(bootstrap_servers=kafka.url, enable_idempotence=True)
            await producer.start()
            try:
                sent = [await producer.send(TOPIC_EVENTS, value, key=key.encode()) for key, value in messages]
                await asyncio.gather(*sent)
            finally:
                await producer.stop()
            accepted: set[str] = set()

            def settled() -> bool:
                rejected = {o["subject"] for o in out.of("incident.rejected")}
                return all(key in rejected or key in accepted for key, _ in messages)

            for _ in range(sized(120, 600)):
                accepted = await _logged_incidents(dsn, prefix)
                if settled():
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.0)
        finally:
            engines.stop_all()
    accepted = await _logged_incidents(dsn, prefix)
    rejected = {o["subject"]: o for o in out.of("incident.rejected")}
    lost = [(key, value) for key, value in messages if key not in accepted and key not in rejected]
    assert not lost, f"{len(lost)} messages neither processed nor dead-lettered, e.g. {lost[:3]}"
    for subject, dead in rejected.items():
        assert dead["data"]["reason"] in REASONS and dead["data"].get("detail"), (subject, dead["data"])
    check_outputs(out.events, strict=True)


async def _logged_incidents(dsn: str, prefix: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT DISTINCT incident_id FROM event_log WHERE incident_id LIKE $1", prefix + "%"
        )
    finally:
        await conn.close()
    return {r["incident_id"] for r in rows}

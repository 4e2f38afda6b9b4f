"""Helpers of the intake's integration tests: the real engine in-process, a tail of incidents.events."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devstack.process import free_port
from devstack.stack import fresh_database
from incident_contracts import TOPIC_EVENTS
from incident_intake.people_app import PeopleChannels, start_people
from incident_intake.people_settings import PeopleSettings
from tests.integration.engine_helpers import TopicReader

API_TOKEN = "intake-test-token"


class EventsTail(TopicReader):
    """Reads incidents.events from its end at entry, in the background (what the intake published)."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(bootstrap, (TOPIC_EVENTS,), from_now=True)
        self.records: list[dict[str, Any]] = []

    def take(self, r: Any) -> None:
        event = orjson.loads(r.value)
        event["_key"] = r.key.decode() if r.key else None
        event["_headers"] = {k: v.decode() for k, v in r.headers or ()}
        self.records.append(event)

    def of(self, subject: str, type_: str | None = None) -> list[dict[str, Any]]:
        """The events published for an incident (of a type)."""
        return [e for e in self.records if e["subject"] == subject and (type_ is None or e["type"] == type_)]

    async def wait_for(self, check: Callable[[], bool], timeout: float = 15.0, what: str = "events") -> None:
        """Wait until `check()` holds, else fail with what was read."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            await asyncio.sleep(0.05)
        seen = [(e["type"], e["subject"]) for e in self.records]
        raise AssertionError(f"timed out waiting for {what}; read: {seen}")


async def engine_state(
    engine: httpx.AsyncClient, incident: str, expected: str, timeout: float = 20.0
) -> dict[str, Any]:
    """The engine's read API view of `incident` once its state is `expected` (fails otherwise)."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await engine.get(
            f"/incidents/{incident}", headers={"Authorization": f"Bearer {API_TOKEN}"}
        )
        if response.status_code == 200:
            body = response.json()
            if body["state"] == expected:
                return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"incident {incident} did not reach {expected!r} in the engine; last: {body}")


@dataclass
class PeopleStack:
    """The real engine (in-process, read API over ASGI) and the people channels beside it."""

    settings: PeopleSettings
    channels: PeopleChannels
    engine: httpx.AsyncClient
    tail: EventsTail
    spans: InMemorySpanExporter


@contextlib.asynccontextmanager
async def people_stack(kafka: str, postgres: str, **settings: Any) -> AsyncIterator[PeopleStack]:
    """Start the engine (from the current end of incidents.events) and the people intake on one fresh
    database; `settings` are the intake's (PeopleSettings fields)."""
    from incident_engine.adapters.telemetry import create_telemetry
    from incident_engine.entrypoints.app import EngineService
    from incident_engine.entrypoints.http import create_http_app
    from tests.integration.engine_helpers import settings_for, start_at_end

    dsn = await fresh_database(postgres)
    engine_settings = settings_for(kafka, dsn, incidents_api_token=API_TOKEN)
    await start_at_end(kafka, dsn, engine_settings.incidents_consumer_group)
    telemetry = create_telemetry("engine-under-intake-test", span_exporters=[])
    service = EngineService(engine_settings, telemetry=telemetry)
    engine_app = create_http_app(service)
    await service.start()
    try:
        assert service.loop is not None
        await asyncio.wait_for(service.loop.ready.wait(), 30)
        intake_settings = PeopleSettings(
            kafka_bootstrap_servers=kafka, database_url=dsn, incidents_api_token=API_TOKEN,
            intake_smtp_port=free_port(), intake_engine_url="http://engine", intake_kafka_timeout_ms=5000,
            intake_smtp_enabled=True,
            **settings,
        )  # fmt: skip
        spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(spans))
        transport = httpx.ASGITransport(app=engine_app)
        channels = await start_people(intake_settings, engine_transport=transport, tracer_provider=provider)
        try:
            async with (
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=engine_app), base_url="http://engine"
                ) as engine,
                EventsTail(kafka) as tail,
            ):
                yield PeopleStack(intake_settings, channels, engine, tail, spans)
        finally:
            await channels.close()
    finally:
        await service.stop()
        telemetry.shutdown()

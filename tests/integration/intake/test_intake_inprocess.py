"""The intake in process against real Kafka and PostgreSQL: trace parentage, replicas racing on one
alert key, PostgreSQL unreachable."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from devstack.stack import Service, fresh_database
from incident_intake.http import create_app
from incident_intake.integrations import load_integrations
from incident_intake.service import IntakeService
from incident_intake.settings import IntakeSettings
from incident_platform.telemetry import create_providers
from tests.integration.intake.helpers import EventsReader, ensure_events_topic
from tests.unit.intake_payloads import ALERTMANAGER_V4, fresh

pytestmark = pytest.mark.integration

TOKEN = "tok-" + uuid.uuid4().hex


class Replica:
    def __init__(self, app: object, service: IntakeService, exporter: InMemorySpanExporter) -> None:
        self.service, self.exporter = service, exporter
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://intake")  # type: ignore[arg-type]


@pytest.fixture
async def replicas(
    kafka: Service, postgres: Service, tmp_path: Path
) -> AsyncIterator[tuple[str, list[Replica]]]:
    """Two intake replicas on one fresh database, each with its own producer and span exporter."""
    await ensure_events_topic(kafka.url)
    dsn = await fresh_database(postgres.url)
    name = f"am{uuid.uuid4().hex[:6]}"
    config = tmp_path / "integrations.yaml"
    config.write_text(
        f"integrations:\n  {name}: {{kind: alertmanager, region: au, auth: {{bearer_token: {TOKEN}}}}}\n"
    )
    settings = IntakeSettings(
        kafka_bootstrap_servers=kafka.url, database_url=dsn, intake_kafka_timeout_ms=5000
    )
    async with AsyncExitStack() as stack:
        built = []
        for _ in range(2):
            exporter = InMemorySpanExporter()
            providers = create_providers("intake-test", span_exporters=[exporter])
            stack.callback(providers.shutdown)
            service = IntakeService(
                settings,
                load_integrations(config),
                tracer=providers.tracer_provider.get_tracer("incident_intake"),
            )
            app = create_app(service, providers)
            await stack.enter_async_context(app.router.lifespan_context(app))
            replica = Replica(app, service, exporter)
            await stack.enter_async_context(replica.client)
            built.append(replica)
        for replica in built:  # the producers connect in the background
            for _ in range(100):
                if (await replica.client.get("/readyz")).status_code == 200:
                    break
                await asyncio.sleep(0.1)
        yield name, built


def _payload() -> dict[str, object]:
    payload = fresh(ALERTMANAGER_V4)
    payload["groupKey"] = f'{{}}:{{alertname="{uuid.uuid4().hex}"}}'
    return payload


async def test_the_request_span_is_the_parent_of_the_event_s(
    kafka: Service, replicas: tuple[str, list[Replica]]
) -> None:
    name, (replica, _) = replicas
    async with EventsReader(kafka.url, lambda e: e["source"].endswith(f"/{name}")) as events:
        answer = await replica.client.post(
            f"/v1/alertmanager/{name}", json=_payload(), headers={"Authorization": f"Bearer {TOKEN}"}
        )
        assert answer.status_code == 200, answer.text
        await events.wait_for(lambda: len(events.events) == 1, "the reported event")
    for _ in range(50):
        spans = {s.name: s for s in replica.exporter.get_finished_spans()}
        if "publish incident.reported" in spans and "POST /v1/alertmanager/{integration}" in spans:
            break
        await asyncio.sleep(0.1)
    request = spans["POST /v1/alertmanager/{integration}"]
    publish = spans["publish incident.reported"]
    assert publish.parent is not None and publish.parent.span_id == request.context.span_id
    assert request.parent is None  # the trace starts at the intake
    traceparent = events.events[0]["_headers"]["traceparent"]
    assert traceparent.startswith(f"00-{publish.context.trace_id:032x}-{publish.context.span_id:016x}-")


async def test_replicas_racing_on_one_alert_key_report_one_incident(
    kafka: Service, replicas: tuple[str, list[Replica]]
) -> None:
    name, pair = replicas
    payload = _payload()
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with EventsReader(kafka.url, lambda e: e["source"].endswith(f"/{name}")) as events:
        answers = await asyncio.gather(
            *[r.client.post(f"/v1/alertmanager/{name}", json=payload, headers=headers) for r in pair * 5]
        )
        assert [a.status_code for a in answers] == [200] * 10
        outcomes = sorted(a.json()["alerts"][0]["outcome"] for a in answers)
        assert outcomes == ["reported"] + ["unchanged"] * 9
        await events.wait_for(lambda: len(events.events) >= 1, "the reported event")
        await asyncio.sleep(1)
        assert [e["type"] for e in events.events] == ["incident.reported"]


async def test_postgres_unreachable_is_503_with_retry_after(replicas: tuple[str, list[Replica]]) -> None:
    name, (replica, _) = replicas
    await replica.service._pool.close()  # type: ignore[union-attr]
    answer = await replica.client.post(
        f"/v1/alertmanager/{name}", json=_payload(), headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert answer.status_code == 503 and answer.headers["retry-after"] == "30"
    assert "PostgreSQL" in answer.json()["error"]
    ready = await replica.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["postgres"] != "ok"

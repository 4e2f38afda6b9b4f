"""Traces end to end, exported over OTLP/HTTP to a real receiver: publisher -> engine -> breach."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from devstack.process import free_port
from devstack.stack import Service, fresh_database
from incident_engine.adapters.telemetry import create_telemetry
from incident_engine.entrypoints.app import EngineService
from incident_engine.entrypoints.commands import publish_events
from tests.integration.engine_helpers import OutputCollector, ago, event, settings_for

pytestmark = pytest.mark.integration


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace endpoint that keeps every span it is sent."""

    spans: list[dict[str, Any]]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest.FromString(body)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.server.spans.append({  # type: ignore[attr-defined]
                        "name": span.name, "trace": span.trace_id.hex(), "id": span.span_id.hex(),
                        "parent": span.parent_span_id.hex(),
                        "links": [(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        "attrs": {a.key: a.value.string_value or a.value.int_value for a in span.attributes},
                    })  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()
        self.wfile.write(b"")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", free_port()), _Handler)
    server.spans = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_one_trace_from_publisher_to_breach_and_a_linked_timer_span(
    kafka: Service, postgres: Service, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces"
    telemetry = create_telemetry(
        "incident-sla-engine-test", span_exporters=[OTLPSpanExporter(endpoint=endpoint)]
    )
    service = EngineService(settings_for(kafka.url, await fresh_database(postgres.url)), telemetry=telemetry)
    p = f"trace-{uuid.uuid4().hex[:6]}-"
    old, live = p + "old", p + "live"
    await service.start()
    try:
        await asyncio.wait_for(service.loop.ready.wait(), 30)  # type: ignore[union-attr]
        async with OutputCollector(kafka.url, p) as out:
            with telemetry.tracer.start_as_current_span("phone line AU: publish") as publish:
                await publish_events(kafka.url, [
                    event("reported", old, ago(hours=2), severity="critical", region="au"),  # overdue now
                    event("reported", live, ago(minutes=14, seconds=57), severity="critical", region="au"),
                ])  # fmt: skip
            await out.wait_for(lambda: len(out.of("incident.sla.breached", old)) == 2, 30, "overdue breaches")
            await out.wait_for(
                lambda: out.of("incident.sla.breached", live, clock="ack") != [], 20, "timer breach"
            )
        telemetry.tracer_provider.force_flush()
    finally:
        await service.stop()
        telemetry.shutdown()
    trace_id = format(publish.get_span_context().trace_id, "032x")
    publish_id = format(publish.get_span_context().span_id, "016x")
    spans = receiver.spans
    processed = {s["attrs"].get("incident.id"): s for s in spans if s["name"] == "incidents.events process"}
    assert processed[old]["trace"] == trace_id and processed[old]["parent"] == publish_id
    assert processed[old]["attrs"]["incident.to_state"] == "reported"
    assert any(s["id"] == publish_id for s in spans), "the publisher's span was exported too"
    # every breach fires from a timer (the overdue ones too, once the report was read and time had
    # passed their due moments): a new span, linked to the trace that armed it
    timer_spans = {s["id"]: s for s in spans if s["name"] == "incident SLA timers fire"}
    assert timer_spans, f"no timer span among {[s['name'] for s in spans]}"
    for incident_id in (old, live):
        breach = out.of("incident.sla.breached", incident_id, clock="ack")[0]
        fired = timer_spans[breach["_headers"]["traceparent"].split("-")[2]]
        assert fired["attrs"]["incident.id"] == incident_id
        assert (trace_id, processed[incident_id]["id"]) in fired["links"]

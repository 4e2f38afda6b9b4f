"""Telemetry adapter: Kafka trace context, timer links, Prometheus text, JSON logs."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from incident_engine.adapters import telemetry
from incident_engine.adapters.telemetry import (
    Observation,
    carrier_of,
    create_telemetry,
    extract_context,
    inject_headers,
    link_from_carrier,
)
from incident_platform import telemetry as platform_telemetry
from incident_platform.logging_json import configure_logging, redact

pytestmark = pytest.mark.unit

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


class Collected(SpanExporter):
    """Keeps finished spans in a list."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans):  # type: ignore[no-untyped-def]
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


@pytest.fixture
def collected() -> Collected:
    return Collected()


@pytest.fixture
def tracer(collected: Collected) -> Iterator[trace.Tracer]:
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(collected))
    yield provider.get_tracer("test")
    provider.shutdown()


def test_inject_extract_round_trip_keeps_trace_and_other_headers(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("publish") as span:
        headers = inject_headers([("ce_type", b"incident.reported"), ("traceparent", b"stale")])
    names = [name for name, _ in headers]
    assert names.count("traceparent") == 1 and "ce_type" in names
    assert TRACEPARENT.match(dict(headers)["traceparent"].decode())

    remote = trace.get_current_span(extract_context(headers)).get_span_context()
    assert remote.is_remote
    assert remote.trace_id == span.get_span_context().trace_id
    assert remote.span_id == span.get_span_context().span_id

    with tracer.start_as_current_span("process", context=extract_context(headers)) as child:
        assert child.get_span_context().trace_id == span.get_span_context().trace_id


def test_extract_tolerates_missing_odd_and_null_headers() -> None:
    for headers in (None, [], [("key", None)], [("TraceParent", b"garbage")]):
        assert not trace.get_current_span(extract_context(headers)).get_span_context().is_valid
    assert inject_headers() == []  # no current span: nothing to carry


def test_timer_span_links_to_the_arming_trace(tracer: trace.Tracer, collected: Collected) -> None:
    with tracer.start_as_current_span("arm") as arming:
        stored = carrier_of()  # what the timer row keeps
    assert set(stored) >= {"traceparent"}
    assert carrier_of(arming.get_span_context()) == stored

    link = link_from_carrier(stored, {"timer.clock": "ack"})
    assert link is not None
    with tracer.start_as_current_span("fire", links=[link]):
        pass
    fired = next(s for s in collected.spans if s.name == "fire")
    assert fired.links[0].context.trace_id == arming.get_span_context().trace_id
    assert fired.links[0].context.span_id == arming.get_span_context().span_id
    assert fired.links[0].attributes == {"timer.clock": "ack"}
    assert fired.context is not None and fired.context.trace_id != arming.get_span_context().trace_id


@pytest.mark.parametrize("carrier", [None, {}, {"traceparent": "nonsense"}])
def test_no_link_without_a_stored_trace(carrier: dict[str, str] | None) -> None:
    assert link_from_carrier(carrier) is None


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (labels matched exactly)."""
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        series, value = line.rsplit(" ", 1)
        metric, _, label_text = series.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', label_text))
        if metric == name and found == labels:
            return float(value)
    raise AssertionError(f"{name}{labels} not in:\n{text}")


def test_metrics_text_has_the_engine_counters_with_their_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    tel = create_telemetry(span_exporters=[])
    try:
        m = tel.metrics
        m.event("incident.reported", "accepted")
        m.event("incident.reported", "accepted", count=2)
        m.event("incident.acknowledged", "duplicate")
        m.rejection("schema")
        m.sla_output("breached", "ack", "critical")
        m.timer_lateness(0.004)
        m.timer_lateness(-1.0)
        m.batch(120, 0.03)
        m.observe("incidents_timers_armed", lambda: 7)
        m.observe("incidents_consumer_lag", lambda: [Observation(5, {"partition": "0"})])
        m.observe("incidents_outbox_backlog", lambda: 1 / 0)  # a failing source is skipped
        body, content_type = tel.metrics_text()
    finally:
        tel.shutdown()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert _sample(text, "incidents_events_total", type="incident.reported", outcome="accepted") == 3
    assert _sample(text, "incidents_events_total", type="incident.acknowledged", outcome="duplicate") == 1
    assert _sample(text, "incidents_rejections_total", reason="schema") == 1
    assert (
        _sample(text, "incidents_sla_outputs_total", kind="breached", clock="ack", severity="critical") == 1
    )
    assert _sample(text, "incidents_timer_lateness_seconds_bucket", le="0.001") == 1  # the clamped -1 s
    assert _sample(text, "incidents_timer_lateness_seconds_bucket", le="0.005") == 2
    assert _sample(text, "incidents_timer_lateness_seconds_bucket", le="60.0") == 2
    assert _sample(text, "incidents_batch_size_sum") == 120
    assert _sample(text, "incidents_batch_duration_seconds_count") == 1
    assert _sample(text, "incidents_timers_armed") == 7
    assert _sample(text, "incidents_consumer_lag", partition="0") == 5
    assert "incidents_outbox_backlog " not in text
    with pytest.raises(ValueError, match="known: incidents_timers_armed"):
        tel.metrics.observe("incidents_typo", lambda: 1)


def test_label_sets_are_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(telemetry, "MAX_LABEL_SETS", 2)
    tel = create_telemetry(span_exporters=[])
    for junk in ("a", "b", "c", "d"):
        tel.metrics.event(junk, "rejected")
    text = tel.metrics_text()[0].decode()
    tel.shutdown()
    assert _sample(text, "incidents_events_total", type="other", outcome="other") == 2


def test_sdk_disabled_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    tel = create_telemetry()
    tel.metrics.event("incident.reported", "accepted")
    with tel.tracer.start_as_current_span("noop") as span:
        assert not span.is_recording()
    assert b"incidents_events_total" not in tel.metrics_text()[0]
    tel.shutdown()


def test_default_sampler_is_parent_based_with_roots_sampled_by_the_engine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from incident_engine.adapters.telemetry import root_sample_ratio

    for name in ("OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    tel = create_telemetry(span_exporters=[])
    description = tel.tracer_provider.sampler.get_description()
    tel.shutdown()
    # the engine draws the 10 % of roots itself, before building a span; the SDK must not draw again
    assert description.startswith("ParentBased{root:AlwaysOnSampler")
    assert root_sample_ratio() == 0.1
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    assert root_sample_ratio() == 0.25
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    tel = create_telemetry(span_exporters=[])
    assert tel.tracer_provider.sampler.get_description() == "AlwaysOffSampler"
    tel.shutdown()


def test_setup_is_idempotent_and_serves_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    # Global OTel providers can be set once per process: keep this test from taking that slot.
    installed: list[object] = []
    monkeypatch.setattr(platform_telemetry.trace, "set_tracer_provider", installed.append)
    monkeypatch.setattr(platform_telemetry.otel_metrics, "set_meter_provider", installed.append)
    monkeypatch.setattr(platform_telemetry, "_installed_globally", False)
    monkeypatch.setattr(telemetry, "_current", None)  # whatever another test left set up
    first = telemetry.setup_telemetry()
    try:
        assert telemetry.setup_telemetry() is first
        first.metrics.rejection("decode")
        assert (
            _sample(telemetry.metrics_text()[0].decode(), "incidents_rejections_total", reason="decode") >= 1
        )
    finally:
        first.shutdown()
        first.shutdown()  # twice is harmless
    assert installed == [first.tracer_provider, first.meter_provider]
    second = telemetry.setup_telemetry()
    assert second is not first and len(installed) == 2  # installed once per process
    second.shutdown()


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    handler = configure_logging("debug", stream=stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)


def test_json_log_line_has_trace_ids_extras_and_masks_secrets(
    log_stream: io.StringIO, tracer: trace.Tracer
) -> None:
    log = logging.getLogger("incident_engine.test")
    with tracer.start_as_current_span("process") as span:
        log.info(
            "connecting to %s",
            "postgresql://engine:s3cr3t@db:5432/incidents",
            extra={"incident_id": "INC-1", "dsn": "host=db password=hunter2 user=engine"},
        )
    line = json.loads(log_stream.getvalue().splitlines()[-1])
    assert line["level"] == "INFO" and line["logger"] == "incident_engine.test"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["span_id"] == format(span.get_span_context().span_id, "016x")
    assert line["message"] == "connecting to postgresql://engine:***@db:5432/incidents"
    assert line["incident_id"] == "INC-1"
    assert line["dsn"] == "host=db password=*** user=engine"
    assert "s3cr3t" not in log_stream.getvalue() and "hunter2" not in log_stream.getvalue()
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", line["time"])


def test_json_log_masks_secrets_in_exceptions_and_nested_extras(log_stream: io.StringIO) -> None:
    log = logging.getLogger("incident_engine.test")
    try:
        raise ConnectionError("cannot reach kafka://svc:pa55@broker:9093")
    except ConnectionError:
        log.exception("broker down", extra={"settings": {"sasl_password": "pa55", "user": "svc"}})
    out = log_stream.getvalue()
    assert "pa55" not in out
    line = json.loads(out.splitlines()[-1])
    assert "ConnectionError" in line["exception"] and "trace_id" not in line


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("http://collector:4318/v1/traces", "http://collector:4318/v1/traces"),
        ("ui http://jaeger:16686/x by ops@example.com", "ui http://jaeger:16686/x by ops@example.com"),
        ("Authorization: Bearer abc.def", "Authorization: Bearer ***"),
        ("INCIDENTS_API_TOKEN=xyz", "INCIDENTS_API_TOKEN=***"),
        ("dbname=x password='p w' user=u", "dbname=x password='***' user=u"),
        ('{"sasl_password": "p"}', '{"sasl_password": "***"}'),
    ],
)
def test_redact_keeps_plain_urls_and_masks_credentials(text: str, masked: str) -> None:
    assert redact(text) == masked


def test_grafana_dashboard_queries_only_metrics_the_engine_exports() -> None:
    dashboard = json.loads(
        (Path(__file__).parents[2] / "deploy/grafana/incident-sla-engine.json").read_text()
    )
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"\bincidents_\w+", e)}
    tel = create_telemetry(span_exporters=[])
    m = tel.metrics
    m.event("t", "o")
    m.rejection("r")
    m.sla_output("k", "c", "s")
    m.timer_lateness(0)
    m.timer_dropped()
    m.batch(1, 0)
    m.parked("incidents.rejected")
    for gauge in telemetry.GAUGES:
        m.observe(gauge, lambda: 0)
    exported = set(re.findall(r"^# TYPE (\w+)", tel.metrics_text()[0].decode(), re.MULTILINE))
    tel.shutdown()
    assert used and used <= exported, used - exported
    assert exported <= used, f"metrics without a panel: {exported - used}"

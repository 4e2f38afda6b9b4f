"""OpenTelemetry for every service: providers from the OTEL_* variables, trace context in Kafka headers.

Each service builds its own instruments on `Providers.meter_provider` and serves
`Providers.metrics_text()` on its `/metrics`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from opentelemetry import metrics as otel_metrics
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = [
    "DEFAULT_SAMPLE_RATIO",
    "Providers",
    "carrier_of",
    "create_providers",
    "extract_context",
    "inject_headers",
    "install_globally",
    "link_from_carrier",
    "root_sample_ratio",
]

_log = logging.getLogger(__name__)

# Root spans (events that arrive without a sampled traceparent) are sampled at this ratio unless
# OTEL_TRACES_SAMPLER says otherwise: a span per event at full rate costs throughput.
DEFAULT_SAMPLE_RATIO: Final = 0.1
_TRACE_CONTEXT = TraceContextTextMapPropagator()

# --------------------------------------------------------------------------- trace context


def inject_headers(
    headers: list[tuple[str, bytes]] | None = None, context: Context | None = None
) -> list[tuple[str, bytes]]:
    """Kafka headers with the trace context of `context` (default: current) set, replacing old ones."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    kept = [(k, v) for k, v in headers or () if k.lower() not in carrier]
    return kept + [(k, v.encode()) for k, v in carrier.items()]


def extract_context(headers: Sequence[tuple[str, bytes | None]] | None) -> Context:
    """The trace context carried by Kafka headers (an empty context when there is none)."""
    carrier: dict[str, str] = {}
    for key, value in headers or ():
        # W3C names are case-insensitive; the first occurrence wins, as HTTP parsers do.
        if value is not None:
            carrier.setdefault(key.lower(), value.decode("latin-1"))
    return propagate.extract(carrier)


def carrier_of(span_context: SpanContext | None = None) -> dict[str, str]:
    """`traceparent` (+ `tracestate`) of a span context (default: current span), to store in a row."""
    if span_context is None:
        span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    carrier: dict[str, str] = {}
    _TRACE_CONTEXT.inject(carrier, context=trace.set_span_in_context(NonRecordingSpan(span_context)))
    return carrier


def link_from_carrier(
    carrier: Mapping[str, str] | None, attributes: Mapping[str, str] | None = None
) -> Link | None:
    """A span Link to the trace stored by `carrier_of`, or None when the carrier holds none."""
    if not carrier:
        return None
    span_context = trace.get_current_span(_TRACE_CONTEXT.extract(dict(carrier))).get_span_context()
    if not span_context.is_valid:
        return None
    return Link(span_context, dict(attributes or {}))


# --------------------------------------------------------------------------- providers


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def root_sample_ratio() -> float | None:
    """Ratio of root traces the default sampler keeps; None when OTEL_TRACES_SAMPLER picks another."""
    if _env("OTEL_TRACES_SAMPLER"):
        return None
    try:
        ratio = float(_env("OTEL_TRACES_SAMPLER_ARG") or DEFAULT_SAMPLE_RATIO)
    except ValueError:
        _log.warning("OTEL_TRACES_SAMPLER_ARG is not a number; using %s", DEFAULT_SAMPLE_RATIO)
        ratio = DEFAULT_SAMPLE_RATIO
    return min(max(ratio, 0.0), 1.0)


def _sampler() -> Sampler | None:
    """None lets the SDK honour OTEL_TRACES_SAMPLER itself. Otherwise parent-based, and roots are
    kept: the engine, which makes roots in bulk (an event without a trace, a timer firing), applies
    `root_sample_ratio()` itself before building a span at all (an unsampled span still costs), so
    the SDK must not sample those roots a second time."""
    ratio = root_sample_ratio()
    return None if ratio is None else ParentBased(ALWAYS_ON)


def _exporters(signal: str, default: str) -> set[str]:
    return {name.strip().lower() for name in (_env(f"OTEL_{signal}_EXPORTER") or default).split(",")}


def _otlp_configured(signal: str) -> bool:
    return bool(_env("OTEL_EXPORTER_OTLP_ENDPOINT") or _env(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))


def _span_exporters() -> list[SpanExporter]:
    exporters: list[SpanExporter] = []
    names = _exporters("TRACES", "otlp")
    # Without an endpoint the OTLP exporter would retry against localhost:4318 forever.
    if "otlp" in names and _otlp_configured("TRACES"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(OTLPSpanExporter())
    if "console" in names:
        exporters.append(ConsoleSpanExporter())
    return exporters


def _metric_readers(registry: CollectorRegistry) -> list[MetricReader]:
    readers: list[MetricReader] = [
        PrometheusMetricReader(disable_target_info=True, scope_info_enabled=False, registry=registry)
    ]
    if "otlp" in _exporters("METRICS", "prometheus") and _otlp_configured("METRICS"):
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    return readers


@dataclass
class Providers:
    """The tracer and meter providers of one service and the registry behind its /metrics."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    registry: CollectorRegistry
    enabled: bool = True
    _closed: bool = field(default=False, repr=False)

    def metrics_text(self) -> tuple[bytes, str]:
        """Prometheus text exposition of every metric and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        """Flush pending spans and metrics, then stop the exporters (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def create_providers(service_name: str, *, span_exporters: Sequence[SpanExporter] | None = None) -> Providers:
    """New providers from the OTEL_* variables, not installed globally (tests, tools)."""
    enabled = _env("OTEL_SDK_DISABLED").lower() != "true"
    attributes = {} if _env("OTEL_SERVICE_NAME") else {"service.name": service_name}
    resource = Resource.create(attributes)
    tracer_provider = TracerProvider(resource=resource, sampler=_sampler())
    registry = CollectorRegistry(auto_describe=False)
    readers = _metric_readers(registry) if enabled else []
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    if enabled:
        for exporter in _span_exporters() if span_exporters is None else span_exporters:
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    return Providers(tracer_provider, meter_provider, registry, enabled)


_global_lock = threading.Lock()
_installed_globally = False


def install_globally(providers: Providers) -> bool:
    """Make `providers` the process's global OTel providers; False when some already were (OTel
    lets the global providers be set once per process; later ones stay local)."""
    global _installed_globally
    with _global_lock:
        if _installed_globally:
            return False
        trace.set_tracer_provider(providers.tracer_provider)
        otel_metrics.set_meter_provider(providers.meter_provider)
        _installed_globally = True
        return True

"""OpenTelemetry for the engine: its metrics on the providers of `incident_platform.telemetry`.

Pure library code: the composition root calls `setup_telemetry()` once, hands `telemetry.metrics`
to the hot path and serves `metrics_text()` on `/metrics`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from incident_contracts.constants import CLOCKS, OUTPUT_TOPICS, REJECTION_REASONS, SEVERITIES
from incident_platform.telemetry import (
    DEFAULT_SAMPLE_RATIO,
    Providers,
    carrier_of,
    create_providers,
    extract_context,
    inject_headers,
    install_globally,
    link_from_carrier,
    root_sample_ratio,
)

__all__ = [
    "DEFAULT_SAMPLE_RATIO",
    "EngineMetrics",
    "Observation",
    "Telemetry",
    "carrier_of",
    "create_telemetry",
    "extract_context",
    "inject_headers",
    "link_from_carrier",
    "metrics_text",
    "root_sample_ratio",
    "setup_telemetry",
]

_log = logging.getLogger(__name__)

SERVICE_NAME: Final = "incident-sla-engine"

# --------------------------------------------------------------------------- metrics

# Timers fire late by milliseconds when healthy, by seconds or minutes after a rebalance or restart.
LATENESS_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS: Final = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
BATCH_SECONDS_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
GAUGES: Final = {
    "incidents_timers_armed": ("{timer}", "SLA timers armed in memory on this replica."),
    "incidents_outbox_backlog": ("{message}", "Outbox rows not yet relayed to Kafka."),
    "incidents_consumer_lag": ("{message}", "Messages behind the end of each assigned partition."),
}
# Label values come partly from input (event types): cap distinct sets so a flood of junk types
# cannot blow up the series count; the excess is counted under "other".
MAX_LABEL_SETS: Final = 256
GaugeSource = Callable[[], float | Iterable[Observation]]


class _LabelCache:
    """Pre-built attribute dicts per label tuple: no dict allocation on the hot path."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._sets: dict[tuple[str, ...], dict[str, str]] = {}
        self._other = dict.fromkeys(names, "other")

    def get(self, values: tuple[str, ...]) -> dict[str, str]:
        found = self._sets.get(values)
        if found is None:
            if len(self._sets) >= MAX_LABEL_SETS:
                return self._other
            found = self._sets[values] = dict(zip(self._names, values, strict=True))
        return found


class EngineMetrics:
    """The engine's instruments; every method is cheap enough for the per-event hot path."""

    def __init__(self, meter: Meter) -> None:
        self._events = meter.create_counter(
            "incidents_events_total", unit="{event}", description="Input events processed, by outcome."
        )
        self._rejections = meter.create_counter(
            "incidents_rejections_total", unit="{event}", description="Input events dead-lettered."
        )
        self._sla_outputs = meter.create_counter(
            "incidents_sla_outputs_total", unit="{event}", description="SLA warnings, breaches, failovers."
        )
        self._timers_dropped = meter.create_counter(
            "incidents_timers_dropped_total",
            unit="{timer}",
            description="SLA timers dropped from the heap because firing them failed (unprocessable).",
        )
        self._parked = meter.create_counter(
            "incidents_outbox_parked_total",
            unit="{event}",
            description="Outputs the broker refused for good (e.g. too large), parked in outbox_parked.",
        )
        self._lateness = meter.create_histogram(
            "incidents_timer_lateness_seconds",
            unit="s",
            description="How late SLA timers fired after their due moment.",
            explicit_bucket_boundaries_advisory=LATENESS_BUCKETS,
        )
        self._batch_size = meter.create_histogram(
            "incidents_batch_size",
            unit="{message}",
            description="Input messages per processed batch.",
            explicit_bucket_boundaries_advisory=BATCH_SIZE_BUCKETS,
        )
        self._batch_seconds = meter.create_histogram(
            "incidents_batch_duration_seconds",
            unit="s",
            description="Time to process one batch, transaction included.",
            explicit_bucket_boundaries_advisory=BATCH_SECONDS_BUCKETS,
        )
        self._event_labels = _LabelCache(("type", "outcome"))
        self._rejection_labels = _LabelCache(("reason",))
        self._sla_labels = _LabelCache(("kind", "clock", "severity"))
        self._sources: dict[str, GaugeSource] = {}
        self._zero_the_alerted_series()
        for name, (unit, description) in GAUGES.items():
            meter.create_observable_gauge(
                name, callbacks=[self._gauge_callback(name)], unit=unit, description=description
            )

    def _zero_the_alerted_series(self) -> None:
        # The series the alerting rules (deploy/prometheus/) watch exist from the start at 0: an
        # `increase(...) > 0` sees the first dead letter or parked output, and a rule never watches a
        # series that does not exist yet.
        for reason in REJECTION_REASONS:
            self._rejections.add(0, self._rejection_labels.get((reason,)))
        for clock in CLOCKS:
            for severity in SEVERITIES:
                self._sla_outputs.add(0, self._sla_labels.get(("breached", clock, severity)))
        self._timers_dropped.add(0)
        for topic in sorted(set(OUTPUT_TOPICS.values())):
            self._parked.add(0, {"topic": topic})

    def event(self, type: str, outcome: str, count: int = 1) -> None:
        """Count processed input events of `type` with `outcome` (accepted, rejected, duplicate...)."""
        self._events.add(count, self._event_labels.get((type, outcome)))

    def rejection(self, reason: str, count: int = 1) -> None:
        """Count dead-lettered input events by reason."""
        self._rejections.add(count, self._rejection_labels.get((reason,)))

    def sla_output(self, kind: str, clock: str, severity: str, count: int = 1) -> None:
        """Count SLA outputs; kind is warning, breached or failover."""
        self._sla_outputs.add(count, self._sla_labels.get((kind, clock, severity)))

    def timer_dropped(self, count: int = 1) -> None:
        """Count SLA timers dropped because their firing fails for a reason no rule explains."""
        self._timers_dropped.add(count)

    def parked(self, topic: str, count: int = 1) -> None:
        """Count outputs parked because the broker refused them (by output topic)."""
        self._parked.add(count, {"topic": topic})

    def timer_lateness(self, seconds: float) -> None:
        """Record how late a timer fired (negative values, from clock skew, count as 0)."""
        self._lateness.record(max(seconds, 0.0))

    def batch(self, size: int, seconds: float) -> None:
        """Record one processed batch: its message count and wall time."""
        self._batch_size.record(size)
        self._batch_seconds.record(seconds)

    def observe(self, name: str, fn: GaugeSource) -> None:
        """Feed gauge `name` from `fn` (a number or Observations); it runs on each scrape, keep it cheap."""
        if name not in GAUGES:
            raise ValueError(f"unknown gauge {name!r}; known: {', '.join(GAUGES)}")
        self._sources[name] = fn

    def _gauge_callback(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(_options: CallbackOptions) -> Iterable[Observation]:
            source = self._sources.get(name)
            if source is None:
                return []
            try:
                value = source()
            except Exception:  # a broken source must not break the whole scrape
                _log.warning("gauge %s: source failed", name, exc_info=True)
                return []
            if isinstance(value, int | float):
                return [Observation(value)]
            return list(value)

        return callback


# --------------------------------------------------------------------------- providers


@dataclass
class Telemetry:
    """The tracer and meter providers of one process, the engine's instruments and /metrics."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    registry: CollectorRegistry
    metrics: EngineMetrics
    tracer: trace.Tracer
    enabled: bool = True
    _closed: bool = field(default=False, repr=False)

    def metrics_text(self) -> tuple[bytes, str]:
        """Prometheus text exposition of every metric and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def shutdown(self) -> None:
        """Flush pending spans and metrics, then stop the exporters (idempotent)."""
        global _current
        if self._closed:
            return
        self._closed = True
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        with _lock:
            if _current is self:
                _current = None


def create_telemetry(
    service_name: str = SERVICE_NAME, *, span_exporters: Sequence[SpanExporter] | None = None
) -> Telemetry:
    """New providers from the OTEL_* variables, not installed globally (tests, tools)."""
    providers = create_providers(service_name, span_exporters=span_exporters)
    meter = providers.meter_provider.get_meter("incident_engine")
    return Telemetry(
        tracer_provider=providers.tracer_provider,
        meter_provider=providers.meter_provider,
        registry=providers.registry,
        metrics=EngineMetrics(meter),
        tracer=providers.tracer_provider.get_tracer("incident_engine"),
        enabled=providers.enabled,
    )


_lock = threading.Lock()
_current: Telemetry | None = None


def setup_telemetry(service_name: str = SERVICE_NAME) -> Telemetry:
    """The process's telemetry, created and installed as the global providers on the first call."""
    global _current
    with _lock:
        if _current is None:
            _current = create_telemetry(service_name)
            install_globally(Providers(_current.tracer_provider, _current.meter_provider, _current.registry))
        return _current


def metrics_text() -> tuple[bytes, str]:
    """Prometheus exposition of the process's telemetry (set up on first use) and its content type."""
    return setup_telemetry().metrics_text()

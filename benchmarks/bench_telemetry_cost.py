"""What tracing costs the engine: end-to-end events/s with telemetry off vs on (default sampling).

    .venv/bin/python benchmarks/bench_telemetry_cost.py [--events 40000] [--runs 3] [--ratio 0.1]

Same input for both (produced once); runs alternate off/on. "On" is the engine's own spans (a span
per event continuing the producer's trace, sampled parent-based at `--ratio` for root traces,
exported through the SDK's batch processor to an exporter that drops them) and its metrics.
FastStream's telemetry middleware is not in the path: the engine consumes with its own batch loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Sequence

import orjson
import uvloop
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from bench_engine import engine_run, generate, produce
from devstack.stack import fresh_database, start_kafka, start_postgres
from incident_engine.adapters.telemetry import create_telemetry


class Discard(SpanExporter):
    """Counts spans and drops them (what a healthy collector costs the engine, minus the network)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.1, help="root-trace sampling ratio when on")
    args = parser.parse_args()
    kafka, _ = start_kafka()
    postgres, _ = start_postgres()
    try:
        ends = await produce(kafka.url, generate(args.events))
        total = sum(ends.values())
        off, on, exported = [], [], 0
        for _ in range(args.runs):
            seconds, _outputs = await engine_run(kafka.url, await fresh_database(postgres.url), ends)
            off.append(total / seconds)
            os.environ["OTEL_TRACES_SAMPLER_ARG"] = str(args.ratio)
            os.environ.pop("OTEL_SDK_DISABLED", None)
            sink = Discard()
            telemetry = create_telemetry("bench", span_exporters=[sink])
            seconds, _outputs = await engine_run(
                kafka.url, await fresh_database(postgres.url), ends, telemetry
            )
            telemetry.shutdown()
            exported = sink.spans
            on.append(total / seconds)
            os.environ["OTEL_SDK_DISABLED"] = "true"
            print(f"off {off[-1]:,.0f} ev/s, on {on[-1]:,.0f} ev/s ({exported} spans)", file=sys.stderr)
        result = {
            "figure": "tracing cost (engine end to end)",
            "events": total,
            "sampling_ratio": args.ratio,
            "telemetry_off_events_per_s": round(statistics.median(off)),
            "telemetry_on_events_per_s": round(statistics.median(on)),
            "ratio_on_off": round(statistics.median(on) / statistics.median(off), 3),
            "spans_exported_last_run": exported,
            "command": "python benchmarks/bench_telemetry_cost.py " + " ".join(sys.argv[1:]),
        }
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    finally:
        kafka.stop()
        postgres.stop()


if __name__ == "__main__":
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
    uvloop.run(main())  # the loop `incidents serve` runs on (uvicorn picks uvloop)

"""Restart: seconds from SIGKILL of the engine to processing again, with 1,000,000 timers re-armed.

    .venv/bin/python benchmarks/bench_restart.py [--timers 1000000] [--runs 3]

1. A fresh database gets `--timers` open incidents with armed timers (COPY, see timer_seed), all due
   later than the benchmark lasts; a second fresh database has none (the baseline).
2. For each database, `--runs` times: the engine (`incidents serve`, a child process) runs with every
   timer armed; it is SIGKILLed, a new one is started at once and an input event is published. The
   restart time runs from the kill until that event is committed AND every timer is armed again
   (/readyz `timers`). The baseline is the same restart without timers: what the consumer group and
   process start cost alone. Target: <= 10 s with 1,000,000 timers.
Kafka and PostgreSQL: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL if set, else started locally (devstack).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench_common import command_line, emit, end_offsets, ensure_topics, spawn_engine, wait_status
from bench_timers import start_at
from devstack.stack import start_kafka, start_postgres
from incident_engine.entrypoints.commands import build_event, publish_events
from timer_seed import seeded_and_empty


async def logged(dsn: str, event_id: str, timeout: float = 120.0) -> None:
    """Wait until the event is in the event log."""
    conn = await asyncpg.connect(dsn)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if await conn.fetchval("SELECT 1 FROM event_log WHERE event_id = $1", event_id):
                return
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    raise TimeoutError(f"event {event_id} not processed in {timeout}s")


def probe() -> dict[str, object]:
    """A new incident's report."""
    incident = f"PROBE-{uuid.uuid4().hex[:8]}"
    return build_event(
        "reported", incident, source="/channels/email", time=datetime.now(UTC), severity="low",
        region="uk", summary="probe", extra={},
    )  # fmt: skip


async def restarts(kafka: str, dsn: str, timers: int, runs: int, log: Path) -> list[dict[str, float]]:
    """Kill and restart the engine `runs` times; the phases of each restart in seconds."""
    group = f"bench-restart-{uuid.uuid4().hex[:6]}"
    await start_at(dsn, group, await end_offsets(kafka))
    proc, port = spawn_engine(kafka, dsn, group, log)
    out = []
    try:
        await wait_status(port, proc, lambda s: s.get("timers", 0) >= timers and bool(s.get("ready")))
        first = probe()
        await publish_events(kafka, [first])
        await logged(dsn, str(first["id"]))
        for _ in range(runs):
            await asyncio.sleep(3.0)  # a few heartbeats: the group sees a live member before the kill
            proc.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            proc.wait()
            proc, port = spawn_engine(kafka, dsn, group, log)
            event = probe()
            await publish_events(kafka, [event])
            armed_task = asyncio.create_task(
                wait_status(port, proc, lambda s: s.get("timers", 0) >= timers and bool(s.get("partitions")))
            )
            await logged(dsn, str(event["id"]))
            processing = time.monotonic() - killed
            await armed_task
            armed = time.monotonic() - killed
            out.append({"processing_s": processing, "rearmed_s": armed, "restart_s": max(processing, armed)})
            print(
                f"restart: processing after {processing:.2f}s, timers re-armed after {armed:.2f}s",
                file=sys.stderr,
            )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--log", type=Path, default=Path(__file__).parent / "out" / "bench_restart.log")
    args = parser.parse_args()
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
    kafka, _ = start_kafka()
    postgres, _ = start_postgres()
    try:
        await ensure_topics(kafka.url)
        dsn, empty = await seeded_and_empty(postgres.url, args.timers)
        loaded = await restarts(kafka.url, dsn, args.timers, args.runs, args.log)
        baseline = await restarts(kafka.url, empty, 0, args.runs, args.log)
        median = statistics.median(r["restart_s"] for r in loaded)
        base = statistics.median(r["restart_s"] for r in baseline)
        result = {
            "figure": "restart after SIGKILL",
            "armed_timers": args.timers,
            "runs": args.runs,
            "restart_s": round(median, 2),
            "baseline_restart_s_without_timers": round(base, 2),
            "ratio": round(median / base, 3),
            "phases_s": {
                "processing": round(statistics.median(r["processing_s"] for r in loaded), 2),
                "rearmed": round(statistics.median(r["rearmed_s"] for r in loaded), 2),
            },
            "targets": {"restart_s": 10},
            "command": command_line(),
        }
        emit(result, args.json)
    finally:
        kafka.stop()
        postgres.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""Engine memory per open incident with its timers (RSS of the real engine, and of its incident cache).

    .venv/bin/python benchmarks/bench_memory.py [--incidents 1000000]

1. Two fresh databases: one with `--incidents` open incidents and their armed timers (COPY, see
   timer_seed), one empty (the baseline).
2. The engine (`incidents serve`, a child process) is started on each; once every timer is armed and
   the process settled, its resident set size is read from /proc. Per incident = (loaded - empty) / N.
3. Incidents decided recently are also kept whole in the engine's incident cache (bounded): the cost
   of one cached incident is measured in this process (tracemalloc over incidents parsed from the
   seeded bodies), and the worst case (cache full) is reported per open incident as well.
Target: <= 1 KB per open incident. PostgreSQL/Kafka: DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS if set,
else started locally (devstack).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import statistics
import sys
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from bench_common import command_line, emit, end_offsets, ensure_topics, rss_bytes, spawn_engine, wait_status
from bench_timers import start_at
from devstack.stack import start_kafka, start_postgres
from incident_engine.domain import Incident
from incident_engine.entrypoints.processor import IncidentCache
from timer_seed import rows, seeded_and_empty


async def engine_rss(kafka: str, dsn: str, timers: int, log: Path, settle: float = 5.0) -> int:
    """RSS of an engine whose timers are all armed, after it settled."""
    group = f"bench-memory-{uuid.uuid4().hex[:6]}"
    await start_at(dsn, group, await end_offsets(kafka))
    proc, port = spawn_engine(kafka, dsn, group, log)
    try:
        await wait_status(port, proc, lambda s: s.get("timers", 0) >= timers and bool(s.get("ready")))
        await asyncio.sleep(settle)
        samples = []
        for _ in range(5):
            samples.append(rss_bytes(proc.pid))
            await asyncio.sleep(0.5)
        return int(statistics.median(samples))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def cached_incident_bytes(count: int = 20_000) -> float:
    """Bytes one incident takes in the engine's IncidentCache (parsed from seeded bodies)."""
    bodies = [
        orjson.loads(str(incident[-1]))
        for incident, _ in rows(count, datetime.now(UTC), timedelta(hours=1), 6)
    ]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cache = IncidentCache(limit=count + 1)
    for body in bodies:
        cache.put(Incident.from_json(body))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / count


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--incidents", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--log", type=Path, default=Path(__file__).parent / "out" / "bench_memory.log")
    args = parser.parse_args()
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
    kafka, _ = start_kafka()
    postgres, _ = start_postgres()
    try:
        await ensure_topics(kafka.url)
        dsn, empty = await seeded_and_empty(postgres.url, args.incidents)
        base = await engine_rss(kafka.url, empty, 0, args.log)
        loaded = await engine_rss(kafka.url, dsn, args.incidents, args.log)
        per_open = (loaded - base) / args.incidents
        per_cached = cached_incident_bytes()
        cache_limit = IncidentCache().limit
        worst = per_open + per_cached * min(cache_limit, args.incidents) / args.incidents
        print(f"engine RSS {base / 2**20:.0f} MiB empty, {loaded / 2**20:.0f} MiB loaded", file=sys.stderr)
        result = {
            "figure": "engine memory per open incident",
            "open_incidents": args.incidents,
            "baseline_rss_mib_empty": round(base / 2**20, 1),
            "rss_mib_loaded": round(loaded / 2**20, 1),
            "bytes_per_open_incident": round(per_open),
            "bytes_per_cached_incident": round(per_cached),
            "incident_cache_limit": cache_limit,
            "bytes_per_open_incident_cache_full": round(worst),
            "targets": {"bytes_per_open_incident": 1024},
            "command": command_line(),
        }
        emit(result, args.json)
    finally:
        kafka.stop()
        postgres.stop()


if __name__ == "__main__":
    asyncio.run(main())

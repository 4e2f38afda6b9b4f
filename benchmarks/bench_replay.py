"""Replay throughput from a real PostgreSQL event log: full replay, what-if and report, in events/s.

    .venv/bin/python benchmarks/bench_replay.py [--events 1000000] [--runs 3] [--json FILE]

1. Generates `--events` input events (the incidents of bench_simulate: every policy, severity and
   region over four weeks), runs them through the domain on time (reporting.seed) and COPYs the
   accepted ones, with the timer firings, into a fresh migrated database.
2. Times, from that database, streaming through a server-side cursor: the full replay (every
   incident's state, exact, as `incidents replay --as-of`), the what-if livepro-1 -> livepro-2
   (as `incidents replay --policy livepro-2`: incidents whose severity has the same rules under both
   policies are replayed once), the same what-if with every incident replayed under both policies,
   and the SLA report.
PostgreSQL: DATABASE_URL if set, else started locally (devstack). Target: >= 100,000 events/s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_simulate import SPAN, START, incident_events

from devstack.stack import fresh_database, start_postgres
from incident_engine.adapters.postgres.migrate import migrate
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.reporting.run import compliance_report, state_at, what_if
from incident_engine.reporting.seed import RecordedLog, record_history, write_log
from incident_engine.reporting.source import LogScope

HORIZON = START + SPAN + timedelta(days=14)


async def seed(dsn: str, events: int, seed_value: int) -> int:
    """Record about `events` events on time and COPY them; return how many rows were logged."""
    rng = Random(seed_value)
    domain = SlaDomain(PolicyRegistry.load())
    log = RecordedLog()
    incidents = events // 4
    batch: list[dict[str, Any]] = []
    for number in range(incidents):
        reported = START + SPAN * (number / incidents)
        batch.extend(event for _, event in incident_events(rng, number, reported))
        if len(batch) >= 100_000:
            record_history(domain, batch, HORIZON, lag=timedelta(milliseconds=20), log=log)
            batch.clear()
    record_history(domain, batch, HORIZON, lag=timedelta(milliseconds=20), log=log)
    await write_log(dsn, log)
    return len(log.rows)


async def timed(what: str, run: Any, events: int, cpu_rates: list[float]) -> float:
    """Run a coroutine factory once; print and return its events/s (wall), keep the CPU-time rate.

    The CPU rate (this process only, PostgreSQL excluded) says what the replay costs when the
    machine is shared with other work; the wall rate is what a user waits.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    await run()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rate = events / wall
    cpu_rates.append(events / cpu)
    print(
        f"{what}: {events:,} events in {wall:.2f}s wall ({cpu:.2f}s cpu): {rate:,.0f} events/s "
        f"({cpu_rates[-1]:,.0f} per cpu-second)",
        flush=True,
    )
    return rate


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    """Seed, then time each kind of replay `--runs` times."""
    service, _ = start_postgres()
    try:
        dsn = await fresh_database(service.url)
        await migrate(dsn)
        started = time.perf_counter()
        logged = await seed(dsn, args.events, args.seed)
        print(f"seeded {logged:,} log rows in {time.perf_counter() - started:.1f}s", flush=True)
        registry = PolicyRegistry.load()
        domain = SlaDomain(registry)
        names = ("full_replay", "what_if", "what_if_exhaustive", "report")
        rates: dict[str, list[float]] = {name: [] for name in names}
        cpu: dict[str, list[float]] = {name: [] for name in names}
        for _ in range(args.runs):
            rates["full_replay"].append(
                await timed(
                    "full replay", lambda: state_at(dsn, domain, LogScope()), logged, cpu["full_replay"]
                )
            )
            rates["what_if"].append(
                await timed(
                    "what-if livepro-2",
                    lambda: what_if(dsn, domain, SlaDomain(registry), "livepro-2", LogScope(), HORIZON),
                    logged,
                    cpu["what_if"],
                )
            )
            rates["what_if_exhaustive"].append(
                await timed(
                    "what-if livepro-2, every incident replayed twice",
                    lambda: what_if(
                        dsn, domain, SlaDomain(registry), "livepro-2", LogScope(), HORIZON, exhaustive=True
                    ),
                    logged,
                    cpu["what_if_exhaustive"],
                )
            )
            rates["report"].append(
                await timed(
                    "report",
                    lambda: compliance_report(dsn, domain, START, START + SPAN, now=datetime.now(UTC)),
                    logged,
                    cpu["report"],
                )
            )
    finally:
        service.stop()
    return {
        "events": logged,
        "runs": args.runs,
        **{f"{name}_events_per_s": round(statistics.median(r)) for name, r in rates.items()},
        **{f"{name}_best_events_per_s": round(max(r)) for name, r in rates.items()},
        **{f"{name}_events_per_cpu_s": round(statistics.median(r)) for name, r in cpu.items()},
        "target_events_per_s": 100_000,
    }


def main() -> None:
    """Parse arguments, run, print (and optionally save) the JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    figures = asyncio.run(main_async(args))
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()

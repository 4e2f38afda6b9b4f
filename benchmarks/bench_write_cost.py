"""What one batch of each event type costs the engine's write path: statements, rows, round trips, time.

    .venv/bin/python benchmarks/bench_write_cost.py [--incidents 20000] [--batch 500] [--against REV]

No Kafka: records are handed to the engine's own BatchProcessor (decide, then commit through the
PostgresStore), one batch at a time, so the Python time (decide) and the PostgreSQL time (commit)
are measured apart. Phases: critical reports, then their acknowledgements (the cache warm, as in a
running engine), then the same acknowledgements' twins after the cache was dropped (a restarted
engine). Every call the store makes on its connections is counted (a round trip each, a COPY one),
and timed, with the cyclic GC's collections. Like the engine's service, with its GC threshold.
PostgreSQL: DATABASE_URL if set, else started locally (devstack).

`--against REV` measures a change of the store's write path where whole-engine runs cannot (their
spread between runs, ±5 %, is larger than the change): `PostgresStore.commit` of git revision REV
(its store.py and queries/*.sql) and this tree's commit take the batches in turn (A B B A ...), in
one process, on the same database, after the same decisions; each phase then prints, for both, the
median client CPU and wall time of a commit per event. REV's commit must work on this tree's
schema and `BatchWrite` (a change of those is not measured this way).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from bench_engine import PARTITIONS, generate_ack_heavy
from devstack.stack import fresh_database, start_postgres
from incident_contracts import TOPIC_EVENTS
from incident_engine.adapters.postgres.migrate import migrate
from incident_engine.adapters.postgres.store import PostgresStore, create_pool
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.entrypoints.processor import BatchProcessor, IncidentCache
from incident_engine.gc_pause import tune_for_batches

CALLS: Counter[str] = Counter()
SECONDS: Counter[str] = Counter()
_gc_started = [0.0]


def _gc_timer(phase: str, info: dict[str, int]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        SECONDS[f"gc gen{info['generation']}"] += time.perf_counter() - _gc_started[0]
        CALLS[f"gc gen{info['generation']}"] += 1


gc.callbacks.append(_gc_timer)


def _count(name: str, method: Any) -> Any:
    async def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        what = args[0] if args and isinstance(args[0], str) else ""
        label = f"{name} {what.split()[0] if what else ''}".strip()
        if label.endswith("--"):  # the store's queries/*.sql open with a comment
            query = "write_batch" if "held AS" in what else "lookup" if "UNION" in what else "?"
            label = f"{name} {query}"
        elif name == "copy_records_to_table":
            label = f"COPY {args[0]}"
        CALLS[label] += 1
        t0 = time.perf_counter()
        try:
            return await method(self, *args, **kwargs)
        finally:
            SECONDS[label] += time.perf_counter() - t0

    return counted


for _name in ("execute", "fetch", "fetchrow", "fetchval", "copy_records_to_table", "executemany"):
    setattr(asyncpg.Connection, _name, _count(_name, getattr(asyncpg.Connection, _name)))


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int | None = None


@dataclass
class Phase:
    decide: list[float] = field(default_factory=list)
    commit: list[float] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    seconds: Counter[str] = field(default_factory=Counter)
    # with --against: (client CPU, wall) seconds of each commit, by whose commit ran it
    turns: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


COMMITS: dict[str, Any] = {"this tree": PostgresStore.commit}


def load_commit_of(rev: str) -> Any:
    """`PostgresStore.commit` of a git revision: its store.py and queries, imported from a temp dir."""
    root = Path(__file__).resolve().parent.parent
    folder = "services/incident_engine/adapters/postgres"

    def show(path: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), "show", f"{rev}:{path}"], check=True,
                                  capture_output=True, text=True).stdout  # fmt: skip
        except subprocess.CalledProcessError as exc:
            raise SystemExit(f"--against {rev}: git cannot show {path}: {exc.stderr.strip()}") from None

    where = Path(tempfile.mkdtemp(prefix="write-cost-"))
    (where / "queries").mkdir()
    listing = subprocess.run(["git", "-C", str(root), "ls-tree", "--name-only", f"{rev}:{folder}/queries"],
                             capture_output=True, text=True).stdout.split()  # fmt: skip
    for name in listing:
        (where / "queries" / name).write_text(show(f"{folder}/queries/{name}"))
    source = show(f"{folder}/store.py").replace("Path(__file__).parent", f"Path({str(where)!r})")
    (where / "store.py").write_text(source)
    spec = importlib.util.spec_from_file_location(f"store_at_{rev}", where / "store.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PostgresStore.commit


async def run_phase(processor: BatchProcessor, records: list[Record], batch: int, now: datetime) -> Phase:
    phase = Phase()
    CALLS.clear()
    SECONDS.clear()
    names = list(COMMITS)
    for n, start in enumerate(range(0, len(records), batch)):
        chunk = records[start : start + batch]
        t0 = time.perf_counter()
        result = await processor.decide(chunk, [], now)
        # A B B A A B ...: neither commit always runs first after the other's
        name = names[(n + n // 2) % len(names)]
        PostgresStore.commit = COMMITS[name]  # type: ignore[method-assign]
        cpu, t1 = time.process_time(), time.perf_counter()
        await processor.commit(result)
        phase.decide.append(t1 - t0)
        phase.commit.append(time.perf_counter() - t1)
        phase.turns.setdefault(name, []).append((time.process_time() - cpu, phase.commit[-1]))
    phase.calls = Counter(CALLS)
    phase.seconds = Counter(SECONDS)
    return phase


async def table_sizes(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS w, n_tup_hot_upd AS hot"
        " FROM pg_stat_user_tables WHERE relname IN"
        " ('event_log', 'incidents', 'timers', 'outbox', 'consumer_offsets', 'timer_firings')"
    )
    return {r["relname"]: r["w"] for r in rows}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--incidents", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--against", metavar="REV", help="A/B this tree's commit with a git revision's")
    args = parser.parse_args()
    if args.incidents < 4 or args.batch < 1:
        parser.error(f"--incidents {args.incidents} --batch {args.batch}: at least 4 incidents and 1 a batch")
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
    if args.against:
        COMMITS[args.against] = load_commit_of(args.against)
    tune_for_batches()  # as the engine's service does
    postgres, _ = start_postgres()
    try:
        dsn = await fresh_database(postgres.url)
        await migrate(dsn)
        pool = await create_pool(dsn)
        store = PostgresStore(pool)
        processor = BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "cost", cache=IncidentCache())
        messages = generate_ack_heavy(2 * args.incidents)
        offsets: Counter[int] = Counter()
        records = []
        for key, value in messages:
            p = zlib.crc32(key) % PARTITIONS
            records.append(Record(TOPIC_EVENTS, p, offsets[p], key, value))
            offsets[p] += 1
        reports, acks = records[: args.incidents], records[args.incidents :]
        now = datetime.now(UTC)
        results: dict[str, Phase] = {}
        before = await table_sizes(pool)
        results["report"] = await run_phase(processor, reports, args.batch, now)
        mid = await table_sizes(pool)
        results["ack (cache warm)"] = await run_phase(processor, acks[: args.incidents // 2], args.batch, now)
        processor.cache.forget()
        results["ack (cache cold)"] = await run_phase(processor, acks[args.incidents // 2 :], args.batch, now)
        after = await table_sizes(pool)
        await pool.close()
        print(f"{args.incidents} critical incidents, batches of {args.batch}, load {os.getloadavg()[0]:.1f}")
        for name, ph in results.items():
            n = len(ph.decide)
            per = {
                k: f"{v / n:g}x {1e6 * ph.seconds[k] / n / args.batch:.0f}µs/ev"
                for k, v in sorted(ph.calls.items())
            }
            d, c = statistics.median(ph.decide), statistics.median(ph.commit)
            print(
                f"{name:18} decide {1e6 * d / args.batch:6.1f} µs/event, commit {1e6 * c / args.batch:6.1f}"
                f" µs/event ({args.batch / (d + c):,.0f} events/s sequential); calls per batch {per}"
            )
            if len(ph.turns) > 1:
                for who, turns in ph.turns.items():
                    cpu = statistics.median(t[0] for t in turns) / args.batch
                    wall = statistics.median(t[1] for t in turns) / args.batch
                    print(f"{'':18}   commit of {who}: client CPU {1e6 * cpu:5.1f} µs/event,"
                          f" wall {1e6 * wall:5.1f} µs/event ({len(turns)} batches)")  # fmt: skip
        print(
            f"row writes (ins+upd+del) by table, reports: "
            f"{ {k: mid.get(k, 0) - before.get(k, 0) for k in mid} }"
        )
        print(f"row writes by table, acks: { {k: after.get(k, 0) - mid.get(k, 0) for k in after} }")
    finally:
        postgres.stop()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(__file__))
    uvloop.run(main())

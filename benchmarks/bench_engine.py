"""End-to-end engine throughput against real Kafka and PostgreSQL, with baselines of the same run.

    .venv/bin/python benchmarks/bench_engine.py [--events 60000] [--runs 3] [--json FILE]
    .venv/bin/python benchmarks/bench_engine.py --workload ack-heavy [--events 100000] [--runs 3]

Workload `mixed` (the default):
1. Produces `--events` input events (incidents of every severity/region: reported, acknowledged,
   updated, restored; times spread over the last days so overdue timers fire too) to incidents.events.
2. Baseline "same rows" (the issue's definition: aiokafka reading the same messages, asyncpg writing
   the same rows, no logic): the rows the engine writes for each message (event log, incident
   projection, timer, outbox, offsets) are computed before the clock starts, with the engine's own
   domain; then aiokafka consumes the messages in batches and the engine's own store writes each
   batch's precomputed rows in one transaction. No parsing, no domain, no relay to Kafka.
3. Baseline "raw pipe" (informational, a floor that writes far less): each message as one jsonb row
   of an unindexed table, with its offset.
4. Baseline "naive pipe" (the outside benchmark of issue 17): aiokafka reads the same messages,
   asyncpg `executemany` writes one row per message (its partition and offset as primary key, the
   incident id, the message as jsonb), 500 a batch, and the consumer commits its offsets to Kafka
   after each batch.
5. Baseline "I/O floor" (informational): the same-rows pipe, and besides each batch's rows the
   engine's relay (`OutboxRelay`, with the engine's producer) sends the batch's precomputed outputs
   to Kafka from memory, as the engine does, and the next batch deletes the rows sent. Everything
   the engine writes to Postgres and to Kafka, and nothing it decides: no parsing, no domain, no
   timers. Timed until every message is committed and every output acknowledged by the broker.
6. Engine: the real EngineService (same process, on uvloop as `incidents serve`) from a fresh database
   and consumer group, timed until every message is committed in Postgres AND every output is
   relayed to Kafka (acknowledged by the broker; the outbox row's deletion, which follows, is not
   waited for).
Workload `ack-heavy` (the outside benchmark of issue 17): `--events` / 2 critical reports (of the
last minute: no timer falls due during the run), then their acknowledgements. Each pipe in turn
(engine, then the naive pipe, each with a fresh database) starts on its own reports, already in the
topic; once it has committed them (the engine: and relayed their outputs), another process sends
their acknowledgements while it runs, and the clock runs from the first acknowledgement sent to
the last one committed (the engine: and its output relayed). The engine keeps its cache warm
between the phases, as a running engine does.

Each pipe of `mixed` also reports its CPU per event over its timed window: the whole machine's (every
process on the host, from /proc/stat: the pipe, PostgreSQL and Kafka, and anything else running) and
the benchmark process's own. A pipe that needs more CPU per event than the machine's cores can give
at a rate cannot reach that rate, however it is split into processes.

Runs alternate the baselines and the engine `--runs` times, after `--warmup` rounds that are not counted
(the first round of a fresh broker runs cold: its JIT has not compiled the produce and fetch paths
yet); prints medians and the ratios.
Kafka and PostgreSQL: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL if set, else started locally (devstack).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import random
import resource
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench_common import PARTITIONS, end_offsets, ensure_topics
from devstack.stack import fresh_database, start_kafka, start_postgres
from incident_contracts import TOPIC_EVENTS, parse_event
from incident_engine.adapters.postgres.migrate import migrate
from incident_engine.adapters.postgres.store import PostgresStore, create_pool
from incident_engine.adapters.store import BatchWrite, LoggedEvent, OutboxRow, TimerRow
from incident_engine.adapters.telemetry import Telemetry
from incident_engine.config import Settings
from incident_engine.domain import Incident, PolicyRegistry, SlaDomain
from incident_engine.entrypoints.app import EngineService, relay_producer
from incident_engine.entrypoints.relay import OutboxRelay


def generate(count: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(key, value) input messages: ~4 events per incident, in per-incident order."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    out: list[tuple[bytes, bytes]] = []
    n = 0
    run = uuid.uuid4().hex[:6]
    while len(out) < count:
        incident = f"B{run}-{n:07d}"
        n += 1
        start = now - timedelta(minutes=rng.randint(1, 3 * 24 * 60))
        severity = rng.choice(("critical", "high", "low"))
        steps = [
            ("incident.reported", start, {"severity": severity, "region": rng.choice(("au", "us", "uk")),
                                          "summary": "slow logins"}),
            ("incident.acknowledged", start + timedelta(minutes=rng.randint(1, 40)), {}),
            ("incident.updated", start + timedelta(minutes=45), {"note": "on it"}),
            ("incident.restored", start + timedelta(minutes=rng.randint(50, 900)), {}),
        ]  # fmt: skip
        for event_type, at, data in steps:
            if at > now:
                break  # not yet happened: an event stamped ahead of the clock is a dead letter, not load
            body = {
                "specversion": "1.0", "id": uuid.uuid4().hex, "source": "/channels/email",
                "type": event_type, "subject": incident, "time": at.isoformat().replace("+00:00", "Z"),
                "datacontenttype": "application/json", "data": data,
            }  # fmt: skip
            out.append((incident.encode(), orjson.dumps(body)))
    return out[:count]


def generate_ack_heavy(count: int, seed: int = 7) -> list[tuple[bytes, bytes]]:
    """(key, value) input messages: count // 2 critical reports, then their acknowledgements."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    run = uuid.uuid4().hex[:6]
    reports: list[tuple[bytes, bytes]] = []
    acks: list[tuple[bytes, bytes]] = []
    for n in range(count // 2):
        incident = f"A{run}-{n:07d}"
        reported = now - timedelta(seconds=rng.randint(30, 60))
        for event_type, at, data, out in (
            ("incident.reported", reported, {"severity": "critical", "region": rng.choice(("au", "us", "uk")),
                                             "summary": "slow logins"}, reports),
            ("incident.acknowledged", reported + timedelta(seconds=20), {}, acks),
        ):  # fmt: skip
            body = {
                "specversion": "1.0", "id": uuid.uuid4().hex, "source": "/channels/email",
                "type": event_type, "subject": incident, "time": at.isoformat().replace("+00:00", "Z"),
                "datacontenttype": "application/json", "data": data,
            }  # fmt: skip
            out.append((incident.encode(), orjson.dumps(body)))
    return reports + acks


async def produce(bootstrap: str, messages: list[tuple[bytes, bytes]]) -> dict[int, int]:
    """Send the messages; return the end offset of each partition afterwards."""
    await ensure_topics(bootstrap)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks="all"
    )
    await producer.start()
    try:
        futures = [await producer.send(TOPIC_EVENTS, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return await end_offsets(bootstrap)


def group_consumer(bootstrap: str, group: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer of the input topic in its own group, from the earliest offset, committing nothing
    by itself (each baseline commits, or not, its own way)."""
    return AIOKafkaConsumer(
        TOPIC_EVENTS, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=False, **options,
    )  # fmt: skip


def machine_cpu_seconds() -> float:
    """CPU time the machine has spent working so far, every core and every process on it (/proc/stat:
    user, nice, system, irq, softirq; not idle, I/O wait, or steal, which is another guest's)."""
    with open("/proc/stat") as stat:
        user, nice, system, _idle, _iowait, irq, softirq, *_ = map(int, stat.readline().split()[1:])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds() -> float:
    """CPU time of this process so far, every thread (the in-process engine's, the baselines')."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Window:
    """A pipe's timed window: its seconds, and the CPU seconds the machine and this process spent
    meanwhile (sampled at the same two moments as the clock, so set-up and tear-down are outside)."""

    def __init__(self) -> None:
        self.seconds = self.machine = self.process = 0.0
        self._opened = (0.0, 0.0, 0.0)

    def open(self) -> None:
        self._opened = (time.perf_counter(), machine_cpu_seconds(), process_cpu_seconds())

    def close(self) -> float:
        """End the window; return its seconds."""
        clock, machine, process = self._opened
        self.seconds = time.perf_counter() - clock
        self.machine = machine_cpu_seconds() - machine
        self.process = process_cpu_seconds() - process
        return self.seconds


async def raw_pipe(
    bootstrap: str, dsn: str, ends: dict[int, int], batch: int = 500, window: Window | None = None
) -> float:
    """Baseline: consume every message and write it as a row with its offset; return seconds taken."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "CREATE TABLE raw_events (k text, v jsonb, p int, o bigint);"
        "CREATE TABLE raw_offsets (p int PRIMARY KEY, o bigint)"
    )
    consumer = group_consumer(bootstrap, f"raw-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    total = sum(ends.values())
    seen = 0
    window = window or Window()
    window.open()
    try:
        while seen < total:
            fetched = await consumer.getmany(timeout_ms=100, max_records=batch)
            records = [r for rs in fetched.values() for r in rs]
            if not records:
                continue
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO raw_events"
                    " SELECT * FROM unnest($1::text[], $2::text[]::jsonb[], $3::int[], $4::bigint[])",
                    [r.key.decode() for r in records], [r.value.decode() for r in records],
                    [r.partition for r in records], [r.offset for r in records],
                )  # fmt: skip
                last = {r.partition: r.offset + 1 for r in records}
                await conn.executemany(
                    "INSERT INTO raw_offsets VALUES ($1, $2) ON CONFLICT (p) DO UPDATE SET o = EXCLUDED.o",
                    list(last.items()),
                )
            seen += len(records)
        return window.close()
    finally:
        await consumer.stop()
        await conn.close()


async def naive_batch(consumer: Any, conn: Any, batch: int, wait_ms: int) -> list[Any]:
    """One step of the naive pipe: fetch up to `batch` messages, `executemany` one row each, commit
    the offsets to Kafka; returns the records (none when nothing came within `wait_ms`)."""
    fetched = await consumer.getmany(timeout_ms=wait_ms, max_records=batch)
    records = [r for rs in fetched.values() for r in rs]
    if records:
        await conn.executemany(
            "INSERT INTO naive_events VALUES ($1, $2, $3, $4)",
            [(r.partition, r.offset, r.key.decode(), r.value.decode()) for r in records],
        )
        await consumer.commit()
    return records


async def naive_pipe(
    bootstrap: str, dsn: str, ends: dict[int, int], batch: int = 500, window: Window | None = None
) -> float:
    """Baseline of the outside benchmark: executemany of one row per message into a table with a
    primary key, 500 a batch, offsets committed to Kafka per batch; seconds taken."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "CREATE TABLE naive_events (kafka_partition int, kafka_offset bigint, incident_id text,"
        " body jsonb, PRIMARY KEY (kafka_partition, kafka_offset))"
    )
    consumer = group_consumer(bootstrap, f"naive-{uuid.uuid4().hex[:6]}", max_poll_records=batch)
    await consumer.start()
    total, seen = sum(ends.values()), 0
    window = window or Window()
    window.open()
    try:
        while seen < total:
            seen += len(await naive_batch(consumer, conn, batch, wait_ms=100))
        return window.close()
    finally:
        await consumer.stop()
        await conn.close()


MessageRows = tuple[
    LoggedEvent | None, Incident | None, bool, list[OutboxRow]
]  # event, state, created, outputs


async def precompute_rows(bootstrap: str, ends: dict[int, int]) -> dict[tuple[int, int], MessageRows]:
    """What the engine writes for each message (partition, offset), decided now, before any clock."""
    domain = SlaDomain(PolicyRegistry.load())
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    rows: dict[tuple[int, int], MessageRows] = {}
    states: dict[str, Incident] = {}
    try:
        tps = [TopicPartition(TOPIC_EVENTS, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        now = datetime.now(UTC)
        while len(rows) < sum(ends.values()):
            for records in (await consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for r in records:
                    event = parse_event(r.value or b"", r.headers)
                    before = states.get(event.subject)
                    decision = domain.handle(before, event, now, r.value)
                    inc = decision.incident
                    logged, snapshot = None, None
                    if decision.accepted and inc is not None:
                        states[inc.id] = inc
                        logged = LoggedEvent(inc.id, inc.seq, event.id, event.type, event.source, event.time,
                                             now, r.partition, r.offset, r.value or b"")  # fmt: skip
                        snapshot = Incident.from_json(inc.to_json())  # the state after this message
                    outputs = [
                        OutboxRow(r.partition, o.topic, o.key, o.id, o.to_json_bytes())
                        for o in decision.outputs
                    ]
                    rows[(r.partition, r.offset)] = (
                        logged,
                        snapshot,
                        before is None and logged is not None,
                        outputs,
                    )
    finally:
        await consumer.stop()
    return rows


async def same_rows(
    bootstrap: str, dsn: str, ends: dict[int, int], rows: dict[tuple[int, int], MessageRows],
    batch: int = 500, relay: bool = False, window: Window | None = None,
) -> float:  # fmt: skip
    """Baseline: consume every message and write the engine's rows for it, a transaction per batch.

    With `relay` (the I/O floor), the engine's relay (`OutboxRelay`, the engine's producer) also
    sends each batch's outputs to Kafka once committed, and the next batch deletes the rows sent, as
    in the engine; the run ends when the broker has acknowledged every output. Unlike the engine,
    which overlaps up to two commits with deciding the next batches, each commit is awaited before
    the next batch is read: the floor is what the I/O costs done plainly, not a bound."""
    await migrate(dsn)
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(dsn, min_size=2)  # as the engine's: the relay's connection is open
        stack.push_async_callback(pool.close)
        store = PostgresStore(pool)
        group = f"rows-{uuid.uuid4().hex[:6]}"
        consumer = group_consumer(bootstrap, group)
        await consumer.start()
        stack.push_async_callback(consumer.stop)
        sender: OutboxRelay | None = None
        if relay:
            producer = relay_producer(Settings(kafka_bootstrap_servers=bootstrap, database_url=dsn))
            await producer.start()
            stack.push_async_callback(producer.stop)  # last of the relay's: as EngineService.stop
            sender = OutboxRelay(store, producer, lambda: list(range(PARTITIONS)))
            task = asyncio.create_task(sender.run(), name="outbox-relay")
            stack.push_async_callback(asyncio.gather, task, return_exceptions=True)
            stack.callback(task.cancel)
            stack.push_async_callback(sender.drain)
            stack.callback(sender.stop)
        total, seen = sum(ends.values()), 0
        window = window or Window()
        window.open()
        while seen < total:
            fetched = await consumer.getmany(timeout_ms=100, max_records=batch)
            write = BatchWrite(group)
            for tp, records in fetched.items():
                write.offsets[(tp.topic, tp.partition)] = (records[0].offset, records[-1].offset + 1)
                for r in records:
                    logged, snapshot, created, outputs = rows[(r.partition, r.offset)]
                    if logged is not None and snapshot is not None:
                        write.events.append(logged)
                        write.incidents[snapshot.id] = (snapshot, r.partition)
                        if created:
                            write.created.add(snapshot.id)
                        due = snapshot.next_due
                        write.timers[snapshot.id] = TimerRow(snapshot.id, r.partition, due) if due else None
                    write.outbox.extend(outputs)  # (the store gives each its id as it commits them)
                seen += len(records)
            if write.empty():
                continue
            if sender is not None:
                write.sent_outbox = sender.take_sent()
            await store.commit(write)
            if sender is not None:
                sender.deleted(write.sent_outbox)
                sender.offer(write.outbox)
        if sender is not None:
            await until_relayed(pool, sender)
        return window.close()


async def until_relayed(pool: asyncpg.Pool, relay: OutboxRelay, timeout: float = 120.0) -> None:
    """Wait until `relayed`; not relayed within `timeout` seconds fails the run (a wedged relay)."""
    deadline = time.monotonic() + timeout
    while not await relayed(pool, relay):
        if time.monotonic() > deadline:
            raise TimeoutError(f"outputs not all relayed to Kafka within {timeout:.0f} s")
        await asyncio.sleep(0.02)


async def relayed(pool: asyncpg.Pool, relay: OutboxRelay) -> bool:
    """Whether every output committed is in Kafka: no outbox row is left that Kafka has not
    acknowledged. Rows acknowledged but not yet deleted do not count: their deletion rides on the next
    batch, or waits for idle input (`OutboxRelay.idle_seconds`, 0.2 s), after the outputs are out. An
    empty outbox, the end these benchmarks waited for before, timed that wait too at the end of each
    run (0.2 s of a 3 s run)."""
    unsent = await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE id <> ALL($1::bigint[])", relay.acknowledged()
    )
    return bool(unsent == 0)


async def engine_run(
    bootstrap: str, dsn: str, ends: dict[int, int], telemetry: Telemetry | None = None,
    window: Window | None = None,
) -> tuple[float, int]:  # fmt: skip
    """The real engine from scratch; seconds until everything is committed and relayed, and outputs."""
    settings = Settings(
        kafka_bootstrap_servers=bootstrap,
        database_url=dsn,
        incidents_consumer_group=f"bench-{uuid.uuid4().hex[:8]}",
        incidents_topic_partitions=PARTITIONS,
    )
    service = EngineService(settings, telemetry=telemetry)
    await service.start()
    assert service.pool is not None and service.relay is not None
    total = sum(ends.values())
    window = window or Window()
    window.open()
    deadline = time.monotonic() + 600
    try:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("the engine did not commit and relay every message within 600 s")
            consumed = await service.pool.fetchval(
                "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE group_id = $1",
                settings.incidents_consumer_group,
            )
            if consumed >= total and await relayed(service.pool, service.relay):
                return window.close(), service.relay.sent_total
            await asyncio.sleep(0.02)
    finally:
        await service.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", choices=("mixed", "ack-heavy"), default="mixed")
    parser.add_argument("--events", type=int, default=None, help="60000 (mixed), 100000 (ack-heavy)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--warmup", type=int, default=1,
        help="rounds run first and not counted (the broker's JIT, Postgres' and the OS's caches)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.events is None:
        args.events = 60_000 if args.workload == "mixed" else 100_000
    if args.events < 2:
        parser.error(f"--events {args.events}: at least 2 are needed")
    if args.runs < 1 or args.warmup < 0:
        parser.error(f"--runs {args.runs} --warmup {args.warmup}: at least one run, and no negative warm-up")
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
    kafka, _ = start_kafka()
    postgres, _ = start_postgres()
    try:
        if args.workload == "mixed":
            result = await mixed(kafka.url, postgres.url, args)
        else:
            result = await ack_heavy(kafka.url, postgres.url, args)
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
        result["command"] = "python benchmarks/bench_engine.py " + " ".join(sys.argv[1:])
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    finally:
        kafka.stop()
        postgres.stop()


async def mixed(kafka: str, postgres: str, args: argparse.Namespace) -> dict[str, object]:
    """Reported/acknowledged/updated/restored of every severity: engine against four baselines."""
    messages = generate(args.events)
    ends = await produce(kafka, messages)
    total = sum(ends.values())
    print(f"{total} messages in {TOPIC_EVENTS} ({args.events} produced now)", file=sys.stderr)
    rows = await precompute_rows(kafka, ends)
    # The messages and rows above are this script's, not a running engine's: out of the collector's
    # generations, so that no pipe (the engine collects when it takes its partitions) scans them.
    gc.collect()
    gc.freeze()
    rate: dict[str, list[float]] = {}
    cpu: dict[str, list[tuple[float, float]]] = {}  # µs per event: (machine, this process)
    runners = {
        "same_rows": lambda dsn, window: same_rows(kafka, dsn, ends, rows, window=window),
        "raw_pipe": lambda dsn, window: raw_pipe(kafka, dsn, ends, window=window),
        "naive_pipe": lambda dsn, window: naive_pipe(kafka, dsn, ends, window=window),
        "io_floor": lambda dsn, window: same_rows(kafka, dsn, ends, rows, relay=True, window=window),
        "engine": lambda dsn, window: engine_run(kafka, dsn, ends, window=window),
    }
    pipes = tuple(runners)
    outputs = 0
    for run in range(-args.warmup, args.runs):
        if run == 0:
            rate.clear()
            cpu.clear()
        for pipe in pipes:
            window = Window()
            done = await runners[pipe](await fresh_database(postgres), window)
            if pipe == "engine":
                _, outputs = done  # (seconds, outputs relayed)
            rate.setdefault(pipe, []).append(total / window.seconds)
            cpu.setdefault(pipe, []).append((1e6 * window.machine / total, 1e6 * window.process / total))
        label = f"run {run + 1}" if run >= 0 else "warm-up (not counted)"
        print(f"{label}: " + ", ".join(f"{pipe.replace('_', ' ')} {rate[pipe][-1]:,.0f} ev/s"
                                       f" ({cpu[pipe][-1][0]:.0f} µs CPU/ev machine-wide)" for pipe in pipes)
              + f"; {outputs} outputs relayed by the engine, load {os.getloadavg()[0]:.1f}",
              file=sys.stderr)  # fmt: skip
    median = statistics.median
    rates = {pipe: median(rate[pipe]) for pipe in pipes}
    eng = rates["engine"]
    return {
        "figure": "engine end-to-end throughput",
        "workload": "mixed",
        "events": total,
        "outputs": outputs,
        "runs": args.runs,
        "warmup_rounds": args.warmup,
        "baseline": "same rows: aiokafka reads the messages, the engine's store writes their rows",
        "baseline_events_per_s": round(rates["same_rows"]),
        "engine_events_per_s": round(eng),
        "ratio": round(eng / rates["same_rows"], 3),
        "raw_pipe_events_per_s": round(rates["raw_pipe"]),
        "ratio_to_raw_pipe": round(eng / rates["raw_pipe"], 3),
        "naive_pipe_events_per_s": round(rates["naive_pipe"]),
        "ratio_to_naive_pipe": round(eng / rates["naive_pipe"], 3),
        "io_floor_events_per_s": round(rates["io_floor"]),
        "ratio_to_io_floor": round(eng / rates["io_floor"], 3),
        "cpu_us_per_event": {
            pipe: {"machine": round(median(m for m, _ in cpu[pipe]), 1),
                   "process": round(median(p for _, p in cpu[pipe]), 1)}
            for pipe in pipes
        },
        "per_run": {pipe: [round(x) for x in rate[pipe]] for pipe in pipes},
        "targets": {"engine_events_per_s": 20_000, "ratio": 0.8},
    }  # fmt: skip


_PRODUCER = """
import asyncio, sys, orjson
from aiokafka import AIOKafkaProducer
async def main():
    messages = orjson.loads(open(sys.argv[2], "rb").read())
    producer = AIOKafkaProducer(
        bootstrap_servers=sys.argv[1], linger_ms=20, max_batch_size=512 * 1024, acks="all"
    )
    await producer.start()
    print("go", flush=True)
    futures = [await producer.send(sys.argv[3], v.encode(), key=k.encode()) for k, v in messages]
    ends = {}
    for meta in await asyncio.gather(*futures):
        ends[str(meta.partition)] = max(ends.get(str(meta.partition), 0), meta.offset + 1)
    await producer.stop()
    print(orjson.dumps(ends).decode(), flush=True)
asyncio.run(main())
"""


class LiveProducer:
    """Sends messages from another process (the consumer under test keeps this process to itself):
    `started` is when the first one is sent, `ends` (partition -> end offset) once all are written."""

    def __init__(self, bootstrap: str, messages: list[tuple[bytes, bytes]]) -> None:
        self.bootstrap = bootstrap
        self.file = Path(f"/tmp/bench-acks-{uuid.uuid4().hex[:8]}.json")
        self.file.write_bytes(orjson.dumps([(k.decode(), v.decode()) for k, v in messages]))
        self.started = 0.0
        self.ends: dict[int, int] | None = None
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the producer; return when it begins sending (its import and connection not timed)."""
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _PRODUCER, self.bootstrap, str(self.file), TOPIC_EVENTS,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert self.proc.stdout is not None
        if (await self.proc.stdout.readline()).strip() != b"go":
            raise RuntimeError("the producer process did not start")
        self.started = time.perf_counter()
        self.task = asyncio.create_task(self._finish())

    async def _finish(self) -> None:
        assert self.proc.stdout is not None
        line = await self.proc.stdout.readline()
        await self.proc.wait()
        self.file.unlink(missing_ok=True)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the producer process exited with {self.proc.returncode}")
        self.ends = {int(p): o for p, o in orjson.loads(line).items()}

    def done(self, position: dict[int, int]) -> bool:
        """Whether a consumer at `position` has read everything sent (raises if the producer failed)."""
        if self.task is not None and self.task.done():
            self.task.result()
        return self.ends is not None and all(position.get(p, 0) >= o for p, o in self.ends.items())


def postgres_cpu_seconds(postmaster: int) -> float:
    """CPU time used so far by a PostgreSQL server: its postmaster and the processes it started."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if stat.parent.name == str(postmaster) or fields[1] == str(postmaster):
            total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


async def postmaster_pid(pool: asyncpg.Pool | asyncpg.Connection[Any]) -> int:
    """The postmaster's pid, from its data directory (the server is local to the benchmark)."""
    data = await pool.fetchval("SELECT setting FROM pg_settings WHERE name = 'data_directory'")
    return int((Path(data) / "postmaster.pid").read_text().split()[0])


async def naive_acks(
    bootstrap: str, dsn: str, start: dict[int, int], reported: dict[int, int],
    acks: list[tuple[bytes, bytes]], batch: int = 500,
) -> tuple[float, float, float]:  # fmt: skip
    """The naive pipe from `start`: reads the reports, then acknowledgements sent meanwhile by another
    process; seconds from the first one sent to the last one committed, and the CPU seconds of this
    process and of PostgreSQL meanwhile."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "CREATE TABLE naive_events (kafka_partition int, kafka_offset bigint, incident_id text,"
        " body jsonb, PRIMARY KEY (kafka_partition, kafka_offset))"
    )
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=f"naive-{uuid.uuid4().hex[:6]}", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    tps = [TopicPartition(TOPIC_EVENTS, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, start.get(tp.partition, 0))
    position = dict(start)
    producer: LiveProducer | None = None
    postmaster = await postmaster_pid(conn)
    cpu = pg_cpu = 0.0
    try:
        while producer is None or not producer.done(position):
            if producer is None and all(position.get(p, 0) >= o for p, o in reported.items()):
                producer = LiveProducer(bootstrap, acks)
                await producer.start()
                cpu, pg_cpu = time.process_time(), postgres_cpu_seconds(postmaster)
            for r in await naive_batch(consumer, conn, batch, wait_ms=20):
                position[r.partition] = r.offset + 1
        seconds = time.perf_counter() - producer.started
        return seconds, time.process_time() - cpu, postgres_cpu_seconds(postmaster) - pg_cpu
    finally:
        await consumer.stop()
        await conn.close()


async def engine_acks(
    bootstrap: str, dsn: str, start: dict[int, int], reported: dict[int, int],
    acks: list[tuple[bytes, bytes]],
) -> tuple[float, float, int, float, float]:  # fmt: skip
    """The engine from `start` (its offsets stored before it starts): the reports, then the
    acknowledgements sent meanwhile by another process. Seconds for the reports (from the engine's
    start, its group join included), seconds from the first acknowledgement sent to the last one
    committed and its output relayed, outputs relayed, and the CPU seconds of the engine's process
    and of PostgreSQL over the acknowledgements."""
    group = f"bench-{uuid.uuid4().hex[:8]}"
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO consumer_offsets (group_id, topic, kafka_partition, next_offset)"
            " VALUES ($1, $2, $3, $4)",
            [(group, TOPIC_EVENTS, p, o) for p, o in start.items()],
        )
    finally:
        await conn.close()
    settings = Settings(
        kafka_bootstrap_servers=bootstrap, database_url=dsn, incidents_consumer_group=group,
        incidents_topic_partitions=PARTITIONS,
    )  # fmt: skip
    service = EngineService(settings)
    await service.start()
    assert service.pool is not None and service.relay is not None
    started = time.perf_counter()
    producer: LiveProducer | None = None
    reports_seconds = 0.0
    postmaster = await postmaster_pid(service.pool)
    cpu = pg_cpu = 0.0
    try:
        while True:
            rows = await service.pool.fetch(
                "SELECT kafka_partition, next_offset FROM consumer_offsets WHERE group_id = $1", group
            )
            position = {r["kafka_partition"]: r["next_offset"] for r in rows}
            done = await relayed(service.pool, service.relay)
            if producer is None:
                if done and all(position.get(p, 0) >= o for p, o in reported.items()):
                    reports_seconds = time.perf_counter() - started
                    producer = LiveProducer(bootstrap, acks)
                    await producer.start()
                    cpu, pg_cpu = time.process_time(), postgres_cpu_seconds(postmaster)
            elif done and producer.done(position):
                seconds = time.perf_counter() - producer.started
                cpu, pg_cpu = time.process_time() - cpu, postgres_cpu_seconds(postmaster) - pg_cpu
                return reports_seconds, seconds, service.relay.sent_total, cpu, pg_cpu
            await asyncio.sleep(0.02)
    finally:
        await service.stop()


async def ack_heavy(kafka: str, postgres: str, args: argparse.Namespace) -> dict[str, object]:
    """Critical reports, then their acknowledgements: the acknowledgement phase against the naive pipe.

    Each pipe, in turn, gets its own reports (in the topic before it starts), and once it has
    committed them (the engine: and relayed their outputs) their acknowledgements are sent by another
    process while it runs: the clock runs from the first acknowledgement sent to the last committed."""
    naive: list[float] = []
    eng: list[float] = []
    eng_reports: list[float] = []
    cpu: list[float] = []
    pg_cpu: list[float] = []
    cpu_naive: list[float] = []
    pg_cpu_naive: list[float] = []
    count = args.events // 2
    outputs = 0
    for run in range(-args.warmup, args.runs):
        messages = generate_ack_heavy(2 * count, seed=run + 100)
        start = await end_offsets(kafka)
        reported = await produce(kafka, messages[:count])
        reports_seconds, seconds, outputs, engine_cpu, postgres_cpu = await engine_acks(
            kafka, await fresh_database(postgres), start, reported, messages[count:]
        )
        eng.append(count / seconds)
        cpu.append(1e6 * engine_cpu / count)
        pg_cpu.append(1e6 * postgres_cpu / count)
        eng_reports.append(count / reports_seconds)
        messages = generate_ack_heavy(2 * count, seed=run + 200)
        start = await end_offsets(kafka)
        reported = await produce(kafka, messages[:count])
        seconds, naive_cpu, naive_pg_cpu = await naive_acks(
            kafka, await fresh_database(postgres), start, reported, messages[count:]
        )
        naive.append(count / seconds)
        cpu_naive.append(1e6 * naive_cpu / count)
        pg_cpu_naive.append(1e6 * naive_pg_cpu / count)
        label = f"run {run + 1}" if run >= 0 else "warm-up (not counted)"
        print(f"{label}: {count} acknowledgements: naive pipe {naive[-1]:,.0f}/s, engine {eng[-1]:,.0f}/s"
              f" ({eng[-1] / naive[-1]:.2f}; {outputs} outputs relayed; CPU per acknowledgement: engine"
              f" process {cpu[-1]:.0f} µs, PostgreSQL {pg_cpu[-1]:.0f} µs; naive pipe {cpu_naive[-1]:.0f} µs,"
              f" PostgreSQL {pg_cpu_naive[-1]:.0f} µs); engine reports"
              f" {eng_reports[-1]:,.0f}/s (group join included); load {os.getloadavg()[0]:.1f}",
              file=sys.stderr)  # fmt: skip
        if run < 0:
            naive, eng, eng_reports, cpu, pg_cpu, cpu_naive, pg_cpu_naive = [], [], [], [], [], [], []
    median = statistics.median
    return {
        "figure": "engine acknowledgement throughput",
        "workload": "ack-heavy",
        "acknowledgements": count,
        "runs": args.runs,
        "warmup_rounds": args.warmup,
        "baseline": "naive pipe: aiokafka, executemany of a row per message (primary key), 500 a batch,"
        " offsets committed to Kafka per batch",
        "naive_pipe_acks_per_s": round(median(naive)),
        "engine_acks_per_s": round(median(eng)),
        "ratio_to_naive_pipe": round(median(eng) / median(naive), 3),
        "engine_reports_per_s_with_start": round(median(eng_reports)),
        "engine_process_cpu_us_per_ack": round(median(cpu)),
        "postgres_cpu_us_per_ack": round(median(pg_cpu)),
        "naive_pipe_process_cpu_us_per_ack": round(median(cpu_naive)),
        "naive_pipe_postgres_cpu_us_per_ack": round(median(pg_cpu_naive)),
        "per_run": {"naive_pipe_acks": [round(x) for x in naive], "engine_acks": [round(x) for x in eng]},
        "targets": {"ratio_to_naive_pipe": 0.5},
    }


if __name__ == "__main__":
    uvloop.run(main())  # the loop `incidents serve` runs on (uvicorn picks uvloop)

"""End-to-end engine throughput against real Kafka and PostgreSQL, with baselines of the same run.

    .venv/bin/python benchmarks/bench_engine.py [--events 60000] [--runs 3] [--json FILE]

1. Produces `--events` input events (incidents of every severity/region: reported, acknowledged,
   updated, restored; times spread over the last days so overdue timers fire too) to incidents.events.
2. Baseline "same rows" (the issue's definition: aiokafka reading the same messages, asyncpg writing
   the same rows, no logic): the rows the engine writes for each message (event log, incident
   projection, timer, outbox, offsets) are computed before the clock starts, with the engine's own
   domain; then aiokafka consumes the messages in batches and the engine's own store writes each
   batch's precomputed rows in one transaction. No parsing, no domain, no relay to Kafka.
3. Baseline "raw pipe" (informational, a floor that writes far less): each message as one jsonb row
   of an unindexed table, with its offset.
4. Engine: the real EngineService (same process, on uvloop as `incidents serve`) from a fresh database
   and consumer group, timed until every message is committed in Postgres AND every output is
   relayed to Kafka (outbox empty).
Runs alternate same-rows/raw/engine `--runs` times, after `--warmup` rounds that are not counted
(the first round of a fresh broker runs cold: its JIT has not compiled the produce and fetch paths
yet); prints medians and the ratios.
Kafka and PostgreSQL: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL if set, else started locally (devstack).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from devstack.stack import fresh_database, start_kafka, start_postgres
from incident_contracts import TOPIC_EVENTS, parse_event
from incident_engine.adapters.postgres.migrate import migrate
from incident_engine.adapters.postgres.store import PostgresStore, create_pool
from incident_engine.adapters.store import BatchWrite, LoggedEvent, OutboxRow, TimerRow
from incident_engine.adapters.telemetry import Telemetry
from incident_engine.config import Settings
from incident_engine.domain import Incident, PolicyRegistry, SlaDomain
from incident_engine.entrypoints.app import EngineService

PARTITIONS = 6


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
            body = {
                "specversion": "1.0", "id": uuid.uuid4().hex, "source": "/channels/email",
                "type": event_type, "subject": incident, "time": at.isoformat().replace("+00:00", "Z"),
                "datacontenttype": "application/json", "data": data,
            }  # fmt: skip
            out.append((incident.encode(), orjson.dumps(body)))
    return out[:count]


async def produce(bootstrap: str, messages: list[tuple[bytes, bytes]]) -> dict[int, int]:
    """Send the messages; return the end offset of each partition afterwards."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC_EVENTS, PARTITIONS, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=512 * 1024, acks="all"
    )
    await producer.start()
    try:
        futures = [await producer.send(TOPIC_EVENTS, value, key=key) for key, value in messages]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC_EVENTS, p) for p in range(PARTITIONS)]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
    return {tp.partition: off for tp, off in ends.items()}


async def raw_pipe(bootstrap: str, dsn: str, ends: dict[int, int], batch: int = 500) -> float:
    """Baseline: consume every message and write it as a row with its offset; return seconds taken."""
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "CREATE TABLE raw_events (k text, v jsonb, p int, o bigint);"
        "CREATE TABLE raw_offsets (p int PRIMARY KEY, o bigint)"
    )
    consumer = AIOKafkaConsumer(
        TOPIC_EVENTS, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    total = sum(ends.values())
    seen = 0
    started = time.perf_counter()
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
        return time.perf_counter() - started
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
    bootstrap: str, dsn: str, ends: dict[int, int], rows: dict[tuple[int, int], MessageRows], batch: int = 500
) -> float:
    """Baseline: consume every message and write the engine's rows for it, a transaction per batch."""
    await migrate(dsn)
    pool = await create_pool(dsn)
    store = PostgresStore(pool)
    group = f"rows-{uuid.uuid4().hex[:6]}"
    consumer = AIOKafkaConsumer(
        TOPIC_EVENTS, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    total, seen = sum(ends.values()), 0
    started = time.perf_counter()
    try:
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
                    write.outbox.extend(outputs)
                seen += len(records)
            if not write.empty():
                await store.commit(write)
        return time.perf_counter() - started
    finally:
        await consumer.stop()
        await pool.close()


async def engine_run(
    bootstrap: str, dsn: str, ends: dict[int, int], telemetry: Telemetry | None = None
) -> tuple[float, int]:
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
    started = time.perf_counter()
    try:
        while True:
            consumed = await service.pool.fetchval(
                "SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets WHERE group_id = $1",
                settings.incidents_consumer_group,
            )
            if consumed >= total and await service.pool.fetchval("SELECT count(*) FROM outbox") == 0:
                return time.perf_counter() - started, service.relay.sent_total
            await asyncio.sleep(0.05)
    finally:
        await service.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=60_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--warmup", type=int, default=1,
        help="rounds run first and not counted (the broker's JIT, Postgres' and the OS's caches)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
    kafka, _ = start_kafka()
    postgres, _ = start_postgres()
    try:
        messages = generate(args.events)
        ends = await produce(kafka.url, messages)
        total = sum(ends.values())
        print(f"{total} messages in {TOPIC_EVENTS} ({args.events} produced now)", file=sys.stderr)
        rows = await precompute_rows(kafka.url, ends)
        base, raw, eng, outputs = [], [], [], 0
        for run in range(-args.warmup, args.runs):
            seconds = await same_rows(kafka.url, await fresh_database(postgres.url), ends, rows)
            base.append(total / seconds)
            seconds = await raw_pipe(kafka.url, await fresh_database(postgres.url), ends)
            raw.append(total / seconds)
            seconds, outputs = await engine_run(kafka.url, await fresh_database(postgres.url), ends)
            eng.append(total / seconds)
            label = f"run {run + 1}" if run >= 0 else "warm-up (not counted)"
            print(f"{label}: same rows {base[-1]:,.0f} ev/s, raw pipe {raw[-1]:,.0f} ev/s, "
                  f"engine {eng[-1]:,.0f} ev/s ({outputs} outputs relayed)", file=sys.stderr)  # fmt: skip
            if run < 0:
                base, raw, eng = [], [], []
        result = {
            "figure": "engine end-to-end throughput",
            "events": total,
            "runs": args.runs,
            "warmup_rounds": args.warmup,
            "baseline": "same rows: aiokafka reads the messages, the engine's store writes their rows",
            "baseline_events_per_s": round(statistics.median(base)),
            "engine_events_per_s": round(statistics.median(eng)),
            "ratio": round(statistics.median(eng) / statistics.median(base), 3),
            "raw_pipe_events_per_s": round(statistics.median(raw)),
            "ratio_to_raw_pipe": round(statistics.median(eng) / statistics.median(raw), 3),
            "targets": {"engine_events_per_s": 20_000, "ratio": 0.35},
            "command": "python benchmarks/bench_engine.py " + " ".join(sys.argv[1:]),
        }
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    finally:
        kafka.stop()
        postgres.stop()


if __name__ == "__main__":
    uvloop.run(main())  # the loop `incidents serve` runs on (uvicorn picks uvloop)

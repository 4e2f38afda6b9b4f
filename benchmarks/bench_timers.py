"""Timer accuracy: lateness of SLA firings with 1,000,000 armed timers while events stream in.

    .venv/bin/python benchmarks/bench_timers.py [--timers 1000000] [--rate 5000] [--duration 60]

1. A fresh database gets `--timers` open critical incidents with their timers (COPY, see timer_seed),
   next timers due evenly over `--span` seconds from `--lead` seconds after seeding starts.
2. The engine (`incidents serve`, a child process) loads them; then `--rate` input events/s of new
   incidents (reported, acknowledged, updated, restored, all severities) stream in for `--duration` s.
3. Every warning/breach/failover of a seeded incident due in the streaming window is read back from
   incidents.breaches: lateness = its `time` (the firing moment) - the moment it may fire (its
   `due_at`; plus INCIDENTS_BREACH_GRACE_MS for a breach or failover order, which wait that long for
   evidence in flight); `delivered` is the Kafka timestamp (when the relay sent it) - that moment.
   Target: p99 firing lateness <= 50 ms.
Kafka and PostgreSQL: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL if set, else started locally (devstack).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from bench_common import (
    PARTITIONS,
    command_line,
    emit,
    ensure_topics,
    percentile,
    spawn_engine,
    wait_status,
)
from devstack.stack import fresh_database, start_kafka, start_postgres
from incident_contracts import TOPIC_BREACHES, TOPIC_EVENTS
from incident_engine.config import Settings
from timer_seed import seed

GRACE = Settings().incidents_breach_grace_ms / 1000  # what the engine this benchmark spawns uses

STEPS = (
    ("incident.reported", None),
    ("incident.acknowledged", None),
    ("incident.updated", {"note": "on it"}),
    ("incident.restored", None),
)


def stream_batch(run: str, start: int, count: int, rng: random.Random) -> list[tuple[bytes, bytes]]:
    """`count` input events (4 per incident, in order), stamped now."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    out = []
    for n in range(start, start + count):
        incident = f"STREAM-{run}-{n // 4:07d}"
        kind, data = STEPS[n % 4]
        if kind == "incident.reported":
            data = {"severity": rng.choice(("critical", "high", "low")),
                    "region": rng.choice(("au", "us", "uk")), "summary": "streamed"}  # fmt: skip
        body = {"specversion": "1.0", "id": f"{incident}-{n % 4}", "source": "/channels/email", "type": kind,
                "subject": incident, "time": now, "datacontenttype": "application/json",
                "data": data}  # fmt: skip
        out.append((incident.encode(), orjson.dumps(body)))
    return out


async def stream(bootstrap: str, rate: int, duration: float) -> int:
    """Send `rate` events/s for `duration` seconds, paced every 10 ms; return how many were sent."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    run, rng, sent = uuid.uuid4().hex[:6], random.Random(3), 0
    started = time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < duration:
            want = int(elapsed * rate) - sent
            if want > 0:
                for key, value in stream_batch(run, sent, want, rng):
                    await producer.send(TOPIC_EVENTS, value, key=key)
                    sent += 1
            await asyncio.sleep(0.01)
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def collect(
    consumer: AIOKafkaConsumer, into: list[tuple[float, float, float]], stop: asyncio.Event
) -> None:
    """(due, fired, delivered) epoch seconds of every seeded incident's timer output."""
    while not stop.is_set():
        batch = await consumer.getmany(timeout_ms=200)
        for records in batch.values():
            for r in records:
                if r.key is None or not r.key.startswith(b"SEED-"):
                    continue
                out = orjson.loads(r.value)
                due = datetime.fromisoformat(out["data"]["due_at"]).timestamp()
                if out["type"] != "incident.sla.warning":
                    due += GRACE  # held for evidence in flight on purpose: not late
                fired = datetime.fromisoformat(out["time"]).timestamp()
                into.append((due, fired, r.timestamp / 1000))


async def end_offsets(bootstrap: str) -> dict[int, int]:
    """The end offset of each input partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(TOPIC_EVENTS, p) for p in range(PARTITIONS)])
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


async def start_at(dsn: str, group: str, offsets: dict[int, int]) -> None:
    """Store the group's input offsets, as if it had consumed what earlier benchmarks left in the topic."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO consumer_offsets VALUES ($1, $2, $3, $4)",
            [(group, TOPIC_EVENTS, p, o) for p, o in offsets.items()],
        )
    finally:
        await conn.close()


async def committed(dsn: str) -> int:
    """Input messages committed by the engine so far (sum of the next offsets)."""
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets"))
    finally:
        await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timers", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=5_000, help="input events/s while measuring")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of streaming")
    parser.add_argument("--lead", type=float, default=0.0, help="seconds from seeding to the first due")
    parser.add_argument("--span", type=float, default=3600.0, help="seconds over which the timers come due")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--log", type=Path, default=Path(__file__).parent / "out" / "bench_timers.log")
    args = parser.parse_args()
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
    kafka, _ = start_kafka()
    postgres, _ = start_postgres()
    proc = None
    try:
        await ensure_topics(kafka.url)
        dsn = await fresh_database(postgres.url)
        due_from = datetime.now(UTC) + timedelta(seconds=args.lead)
        seconds = await seed(dsn, args.timers, due_from, timedelta(seconds=args.span), PARTITIONS)
        print(f"seeded {args.timers:,} incidents with timers in {seconds:.1f}s", file=sys.stderr)
        group = f"bench-timers-{uuid.uuid4().hex[:6]}"
        await start_at(dsn, group, await end_offsets(kafka.url))
        proc, port = spawn_engine(kafka.url, dsn, group, args.log)
        started = time.monotonic()
        status = await wait_status(port, proc, lambda s: bool(s.get("ready")) and s.get("timers", 0) > 0)
        print(
            f"engine ready with {status['timers']:,} timers in {time.monotonic() - started:.1f}s",
            file=sys.stderr,
        )
        consumer = AIOKafkaConsumer(bootstrap_servers=kafka.url, enable_auto_commit=False)
        await consumer.start()
        tps = [TopicPartition(TOPIC_BREACHES, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        samples: list[tuple[float, float, float]] = []
        stop = asyncio.Event()
        reader = asyncio.create_task(collect(consumer, samples, stop))
        window_from = time.time() + 2.0  # timers due before this were overdue at load or warming up
        sent = await stream(kafka.url, args.rate, args.duration)
        window_to = time.time()
        deadline = time.monotonic() + 120
        target = sum((await end_offsets(kafka.url)).values())
        while await committed(dsn) < target and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        drained = time.time() - window_to
        await asyncio.sleep(2.0)  # the last outputs of the window reach Kafka
        stop.set()
        await reader
        await consumer.stop()
        window = [s for s in samples if window_from <= s[0] <= window_to]
        fired = [(f - d) * 1000 for d, f, _ in window]
        delivered = [(k - d) * 1000 for d, _, k in window]
        result = {
            "figure": "timer lateness",
            "armed_timers": args.timers,
            "input_events": sent,
            "input_events_per_s": round(sent / args.duration),
            "input_drain_s_after_stream": round(drained, 2),
            "firings_measured": len(fired),
            "lateness_ms": {
                q: round(percentile(fired, v), 2) for q, v in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
            },
            "delivered_lateness_ms": {
                q: round(percentile(delivered, v), 2) for q, v in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
            },
            "targets": {"lateness_p99_ms": 50},
            "command": command_line(),
        }
        emit(result, args.json)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except Exception:
                proc.kill()
        kafka.stop()
        postgres.stop()


if __name__ == "__main__":
    asyncio.run(main())

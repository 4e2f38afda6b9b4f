"""Timer accuracy: lateness of SLA firings with 1,000,000 armed timers while events stream in.

    .venv/bin/python benchmarks/bench_timers.py [--timers 1000000] [--duration 60] [--rate N]
        [--saturate 20000] [--profile FLAME.svg]

1. A fresh database gets `--timers` open critical incidents with their timers (COPY, see timer_seed),
   next timers due evenly over `--span` seconds from `--lead` seconds after seeding starts.
2. The engine (`incidents serve`, a child process) loads them. Its own maximum input rate is measured
   first, in the same run and with the same armed timers: `--saturate` events are produced as fast as
   the producer can (pre-built, before the clock starts), timed until the engine has committed them
   all. That rate is the machine's and the engine's speed together: a slow host gets a lighter load.
3. New incidents (reported, acknowledged, updated, restored, all severities) then stream in for
   `--duration` s at half that maximum rate (`--rate` forces one), paced every 10 ms.
4. Every warning/breach/failover of a seeded incident due in the streaming window is read back from
   incidents.breaches: lateness = its `time` (the wall clock when the engine fired it) - the moment it
   may fire (its `due_at` for a warning; `due_at` + INCIDENTS_BREACH_GRACE_MS for a breach or failover
   order, which wait that long for evidence in flight on purpose, so that wait is not counted as
   lateness); `delivered` is the Kafka timestamp (when the relay sent it) - that same moment.
   The window opens 2 s into streaming, and not before the engine has fired every timer that was
   already overdue when streaming began (the backlog of seeding, loading and the maximum-rate phase)
   and then committed all the input produced 100 ms before (the input that queued while it fired
   them): that catch-up is not the lateness under a steady load. The JSON says when each happened.
   Target: p99 firing lateness <= 50 ms.
With `--profile FILE.svg`, py-spy samples the engine during the streaming phase (a flame graph).
Kafka and PostgreSQL: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL if set, else started locally (devstack).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import random
import signal
import subprocess
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
    end_offsets,
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


async def saturate(bootstrap: str, dsn: str, count: int) -> tuple[float, float]:
    """The engine's maximum input rate: `count` events produced as fast as possible (built before the
    clock starts), timed until all are committed; returns (events/s, seconds)."""
    messages = stream_batch(uuid.uuid4().hex[:6], 0, count, random.Random(5))
    target = sum((await end_offsets(bootstrap)).values()) + count
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all")
    await producer.start()
    started = time.monotonic()
    try:
        for key, value in messages:
            await producer.send(TOPIC_EVENTS, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    deadline = started + 600
    while await committed(dsn) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the engine did not commit {count:,} events in 600 s")
        await asyncio.sleep(0.02)
    seconds = time.monotonic() - started
    return count / seconds, seconds


async def stream(bootstrap: str, rate: int, duration: float, progress: list[int] | None = None) -> int:
    """Send `rate` events/s for `duration` seconds, paced every 10 ms; return how many were sent
    (`progress[0]` counts them as they go)."""
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
                if progress is not None:
                    progress[0] = sent
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


async def follow(
    dsn: str, base: int, progress: list[int], into: list[tuple[float, int, int]], stop: asyncio.Event
) -> None:
    """Every 100 ms: (epoch seconds, input messages produced, input messages the engine committed)."""
    conn = await asyncpg.connect(dsn)
    try:
        while not stop.is_set():
            produced = base + progress[0]
            done = int(await conn.fetchval("SELECT coalesce(sum(next_offset), 0) FROM consumer_offsets"))
            into.append((time.time(), produced, done))
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


def caught_up_after(track: list[tuple[float, int, int]], moment: float) -> float | None:
    """The first moment from `moment` on when the engine had committed all the input produced 100 ms
    before (it keeps up with its input), None if never."""
    for (_, produced_before, _), (at, _, done) in itertools.pairwise(track):
        if at >= moment and done >= produced_before:
            return at
    return None


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
    parser.add_argument(
        "--rate", type=int, default=None, help="input events/s while measuring (default: half the maximum)"
    )
    parser.add_argument(
        "--saturate", type=int, default=20_000, help="events of the maximum-rate phase (skipped with --rate)"
    )
    parser.add_argument("--profile", type=Path, default=None, help="py-spy flame graph (SVG) of streaming")
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
        max_rate = seconds_max = None
        rate = args.rate
        if rate is None:
            max_rate, seconds_max = await saturate(kafka.url, dsn, args.saturate)
            rate = int(max_rate / 2)
            print(
                f"engine maximum: {max_rate:,.0f} events/s ({args.saturate:,} in {seconds_max:.1f}s);"
                f" streaming at {rate:,}/s",
                file=sys.stderr,
            )
        profiler = None
        if args.profile is not None:
            args.profile.parent.mkdir(parents=True, exist_ok=True)
            profiler = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(proc.pid), "--rate",
                 "250", "--duration", str(int(args.duration)), "--output", str(args.profile)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
        progress, track, tracked = [0], [], asyncio.Event()
        follower = asyncio.create_task(
            follow(dsn, sum((await end_offsets(kafka.url)).values()), progress, track, tracked)
        )
        stream_from = time.time()
        sent = await stream(kafka.url, rate, args.duration, progress)
        window_to = time.time()
        tracked.set()
        await follower
        deadline = time.monotonic() + 120
        target = sum((await end_offsets(kafka.url)).values())
        while await committed(dsn) < target and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        drained = time.time() - window_to
        await asyncio.sleep(2.0)  # the last outputs of the window reach Kafka
        stop.set()
        await reader
        await consumer.stop()
        if profiler is not None:
            _, errors = profiler.communicate(timeout=120)
            if profiler.returncode != 0:
                print(f"py-spy failed: {errors.decode(errors='replace').strip()[-300:]}", file=sys.stderr)
            else:
                print(f"flame graph of the streaming phase: {args.profile}", file=sys.stderr)
        # The window opens 2 s into streaming, and not before the engine has fired every timer that
        # was overdue when streaming began (due during seeding, loading and the maximum-rate phase:
        # thousands, fired as a backlog while the input streams) and then caught up with the input
        # that queued meanwhile. What comes due during that catch-up measures the catch-up (its
        # watermark follows the input read), not the lateness under a steady load.
        overdue = [f for d, f, _ in samples if d < stream_from]
        backlog_fired = max(overdue, default=stream_from)
        caught_up = caught_up_after(track, backlog_fired)
        window_from = max(stream_from + 2.0, caught_up if caught_up is not None else window_to)
        window = [s for s in samples if window_from <= s[0] <= window_to]
        fired = [(f - d) * 1000 for d, f, _ in window]
        delivered = [(k - d) * 1000 for d, _, k in window]
        result = {
            "figure": "timer lateness",
            "armed_timers": args.timers,
            "input_events": sent,
            "input_events_per_s": round(sent / args.duration),
            "input_rate": "forced (--rate)" if args.rate is not None else "half the engine's maximum",
            "engine_max_events_per_s": round(max_rate) if max_rate is not None else None,
            "engine_max_measured_with": (
                f"{args.saturate:,} events in {seconds_max:.1f}s" if seconds_max is not None else None
            ),
            "input_drain_s_after_stream": round(drained, 2),
            "firings_measured": len(fired),
            "overdue_at_stream_start": len(overdue),
            "overdue_fired_s_into_stream": round(backlog_fired - stream_from, 2),
            "input_caught_up_s_into_stream": round(caught_up - stream_from, 2) if caught_up else None,
            "window_opened_s_into_stream": round(window_from - stream_from, 2),
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

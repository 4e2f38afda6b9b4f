"""Notifier throughput and latency: notifications/s and p99 from the output's `time` to delivery.

    .venv/bin/python benchmarks/bench_notifier.py [--rate 200] [--duration 20] [--backlog 5000]

Output CloudEvents (`incident.sla.breached`, built with the contract models' shape) go to a fresh
topic, one webhook destination on a loopback HTTP receiver that answers 204.
1. Steady: `--rate` outputs/s for `--duration` s, each stamped `time` = the moment it is produced;
   latency = arrival at the receiver - that `time` (p50, p99).
2. Backlog: `--backlog` outputs already on the topic when the contender starts; notifications/s =
   backlog / time from the first delivery to the last (the consumer-group join excluded).
The contenders: the notifier (`Notifier`, in process: the durable schedule in PostgreSQL, signed
webhooks, leases) and the baseline, a bare aiokafka consumer that POSTs each message to the receiver
with the same concurrency and nothing else (no schedule, no signature, no retries): the cost of the
guarantees is the ratio of the two. Both run in this process, measured in the same run.
Kafka and PostgreSQL: KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL if set, else started locally (devstack).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench_common import command_line, emit, percentile
from devstack.stack import fresh_database, start_kafka, start_postgres
from incident_notifier.config import parse
from incident_notifier.service import Notifier
from incident_notifier.settings import NotifierSettings
from incident_platform.telemetry import create_providers

CONCURRENCY = 16


class Receiver:
    """Loopback HTTP/1.1 server answering 204; records the arrival (wall clock) of each id."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.arrivals.setdefault(headers.get("webhook-id", ""), time.time())
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                del line
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def output(prefix: str, i: int) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "specversion": "1.0", "id": f"{prefix}-{i}", "source": "/engine", "type": "incident.sla.breached",
        "subject": f"INC-{prefix}-{i}", "time": now, "datacontenttype": "application/json",
        "data": {"clock": "ack", "due_at": now, "policy": "livepro-1", "severity": "critical", "region": "au",
                 "summary": "payments down", "source": "/channels/phone/au"},
    }  # fmt: skip


async def produce(kafka: str, topic: str, prefix: str, count: int, rate: float | None) -> list[str]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka, linger_ms=5)
    await producer.start()
    ids = []
    started = time.monotonic()
    try:
        for i in range(count):
            if rate:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            event = output(prefix, i)
            ids.append(event["id"])
            await producer.send(topic, orjson.dumps(event), key=event["subject"].encode())
        await producer.flush()
    finally:
        await producer.stop()
    return ids


async def baseline(kafka: str, topic: str, url: str, stop: asyncio.Event) -> None:
    """A bare consumer: read, POST the same bytes (an id header for the receiver), commit."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka, group_id=f"bare-{uuid.uuid4().hex[:6]}", auto_offset_reset="earliest",
        enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    limit = asyncio.Semaphore(CONCURRENCY)
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=CONCURRENCY)) as client:

        async def post(value: bytes) -> None:
            async with limit:
                event_id = orjson.loads(value)["id"]
                headers = {"content-type": "application/json", "webhook-id": event_id}
                await client.post(url, content=value, headers=headers)

        try:
            while not stop.is_set():
                batch = await consumer.getmany(timeout_ms=100, max_records=500)
                await asyncio.gather(*(post(m.value or b"") for msgs in batch.values() for m in msgs))
                if batch:
                    await consumer.commit()
        finally:
            await consumer.stop()


async def contender(
    name: str, kafka: str, dsn_server: str, url: str, topic: str
) -> tuple[Any, asyncio.Event]:
    stop = asyncio.Event()
    if name == "baseline":
        task = asyncio.create_task(baseline(kafka, topic, url, stop))
        return task, stop
    os.environ["BENCH_SECRET"] = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    settings = NotifierSettings(
        kafka_bootstrap_servers=kafka, database_url=await fresh_database(dsn_server),
        incidents_notifier_topics=topic, incidents_notifier_group=f"bench-{uuid.uuid4().hex[:6]}",
        incidents_notifier_allow_private=True, incidents_notifier_concurrency=CONCURRENCY,
        incidents_notifier_poll_ms=50, incidents_log_level="WARNING",
    )  # fmt: skip
    hook = {"type": "webhook", "url": url, "secrets": [{"env": "BENCH_SECRET"}]}
    config = parse({"destinations": {"hook": hook}, "routes": [{"to": "hook"}]})
    notifier = Notifier(settings, config, create_providers("bench-notifier", span_exporters=[]))
    await notifier.start()
    return notifier, stop


async def finish(handle: Any, stop: asyncio.Event) -> None:
    stop.set()
    if isinstance(handle, Notifier):
        await handle.stop()
    else:
        await handle


async def wait_all(receiver: Receiver, ids: list[str], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(i in receiver.arrivals for i in ids):
            return max(receiver.arrivals[i] for i in ids)
        await asyncio.sleep(0.02)
    missing = sum(1 for i in ids if i not in receiver.arrivals)
    raise TimeoutError(f"{missing} of {len(ids)} not delivered in {timeout:.0f}s")


async def measure(name: str, kafka: str, pg: str, receiver: Receiver, url: str, args: Any) -> dict[str, Any]:
    # steady rate: latency
    topic = f"bench-notifier-{uuid.uuid4().hex[:8]}"
    await produce(kafka, topic, f"{name}-warm", 1, None)  # creates the topic
    handle, stop = await contender(name, kafka, pg, url, topic)
    await wait_all(receiver, [f"{name}-warm-0"], 60)
    prefix = f"{name}-steady-{uuid.uuid4().hex[:4]}"
    started = time.time()
    ids = await produce(kafka, topic, prefix, int(args.rate * args.duration), args.rate)
    await wait_all(receiver, ids, 120)
    latencies = [(receiver.arrivals[i] - (started + n / args.rate)) * 1000 for n, i in enumerate(ids)]
    await finish(handle, stop)
    # backlog: throughput
    topic = f"bench-notifier-{uuid.uuid4().hex[:8]}"
    prefix = f"{name}-backlog-{uuid.uuid4().hex[:4]}"
    ids = await produce(kafka, topic, prefix, args.backlog, None)
    handle, stop = await contender(name, kafka, pg, url, topic)
    last = await wait_all(receiver, ids, 300)
    await finish(handle, stop)
    begun = min(receiver.arrivals[i] for i in ids)  # from the first delivery: the group join excluded
    return {
        "p50_ms": round(percentile(latencies, 0.5), 1),
        "p99_ms": round(percentile(latencies, 0.99), 1),
        "notifications_per_s": round((args.backlog - 1) / max(last - begun, 1e-6), 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200.0, help="outputs/s of the steady phase")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of the steady phase")
    parser.add_argument("--backlog", type=int, default=5000, help="outputs waiting for the throughput phase")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("OTEL_SDK_DISABLED", "true")
    kafka, _ = start_kafka()
    postgres, _ = start_postgres()
    try:
        receiver = Receiver()
        url = f"http://127.0.0.1:{await receiver.start()}/hook"
        base = await measure("baseline", kafka.url, postgres.url, receiver, url, args)
        print(f"baseline: {base}", file=sys.stderr)
        mine = await measure("notifier", kafka.url, postgres.url, receiver, url, args)
        print(f"notifier: {mine}", file=sys.stderr)
        emit(
            {
                "figure": "notifier",
                "rate_per_s": args.rate,
                "duration_s": args.duration,
                "backlog": args.backlog,
                "notifier": mine,
                "baseline": base,
                "throughput_ratio": round(mine["notifications_per_s"] / base["notifications_per_s"], 3),
                "command": command_line(),
            },
            args.json,
        )
    finally:
        kafka.stop()
        postgres.stop()


if __name__ == "__main__":
    asyncio.run(main())

"""Helpers of the engine's integration tests: fresh databases, output collection, event building."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer

from devstack.engine import spawn_engine
from incident_contracts import TOPIC_BREACHES, TOPIC_REJECTED, TOPIC_STATE
from incident_engine.config import Settings
from incident_engine.entrypoints.commands import build_event

OUTPUT_TOPICS = (TOPIC_STATE, TOPIC_BREACHES, TOPIC_REJECTED)


def settings_for(kafka: str, dsn: str, group: str | None = None, **extra: Any) -> Settings:
    """Engine settings for one test (its own database and consumer group)."""
    return Settings(
        kafka_bootstrap_servers=kafka,
        database_url=dsn,
        incidents_consumer_group=group or f"engine-{uuid.uuid4().hex[:8]}",
        **extra,
    )


def event(event_type: str, incident: str, at: datetime | None = None, **data: Any) -> dict[str, Any]:
    """A valid input CloudEvent for tests."""
    return build_event(
        event_type, incident, source="/channels/test", time=at or datetime.now(UTC),
        severity=data.pop("severity", None), region=data.pop("region", None), summary=None, extra=data,
    )  # fmt: skip


def ago(**kwargs: float) -> datetime:
    """A moment in the past."""
    return datetime.now(UTC) - timedelta(**kwargs)


class TopicReader:
    """Reads Kafka topics in the background, without a consumer group, handing each record to
    `take`; from the beginning, or (`from_now`) from their end at entry."""

    def __init__(self, bootstrap: str, topics: tuple[str, ...], *, from_now: bool = False) -> None:
        self.bootstrap, self.topics, self.from_now = bootstrap, topics, from_now
        self._task: asyncio.Task[None] | None = None

    def take(self, record: Any) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Any:
        self._consumer = AIOKafkaConsumer(
            *self.topics, bootstrap_servers=self.bootstrap, group_id=None, metadata_max_age_ms=1000,
            auto_offset_reset="latest" if self.from_now else "earliest",
        )  # fmt: skip
        await self._consumer.start()
        if self.from_now:
            for _ in range(100):  # without a group the consumer takes every partition once it knows them
                if self._consumer.assignment():
                    break
                await asyncio.sleep(0.05)
            for tp in self._consumer.assignment():  # fix the start now: what comes from here is read
                await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        from aiokafka.errors import KafkaError

        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200)
            except KafkaError:  # a broker of a test cluster restarting: metadata catches up, go on
                await asyncio.sleep(0.5)
                continue
            for records in batch.values():
                for r in records:
                    self.take(r)


class OutputCollector(TopicReader):
    """Reads the output topics from the beginning in the background; keeps what concerns a prefix."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        super().__init__(bootstrap, OUTPUT_TOPICS)
        self.prefix = prefix
        self.events: list[dict[str, Any]] = []

    def take(self, r: Any) -> None:
        if r.key is not None and r.key.decode().startswith(self.prefix) and r.value:
            out = orjson.loads(r.value)
            out["_topic"] = r.topic
            out["_headers"] = {k: v.decode() for k, v in r.headers or ()}
            self.events.append(out)

    def of(self, type_: str, subject: str | None = None, **data: Any) -> list[dict[str, Any]]:
        """The collected outputs of a type (and subject, and data fields)."""
        return [
            e for e in self.events
            if e["type"] == type_ and (subject is None or e["subject"] == subject)
            and all(e["data"].get(k) == v for k, v in data.items())
        ]  # fmt: skip

    async def wait_for(self, check: Callable[[], bool], timeout: float = 30.0, what: str = "outputs") -> None:
        """Wait until `check()` holds, else fail with what was collected."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            await asyncio.sleep(0.1)
        summary = [
            (e["type"], e["subject"], e["data"].get("clock") or e["data"].get("reason")) for e in self.events
        ]
        raise AssertionError(f"timed out waiting for {what}; collected: {summary}")


def engine_process(settings: Settings, log_file: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`incidents serve` as a child process (to be killed for real); returns it and its HTTP port."""
    dsn = settings.database_url.get_secret_value()
    return spawn_engine(settings.kafka_bootstrap_servers, dsn, settings.incidents_consumer_group, log_file)


async def wait_ready(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60.0) -> None:
    """Wait until the engine's /readyz says ready."""
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"engine exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise AssertionError("engine not ready in time")


async def start_at_end(bootstrap: str, dsn: str, group: str) -> None:
    """Make a new engine of `group` start at the current end of incidents.events (skip what earlier
    tests published), as an operator deploying a fresh engine "from now on" would."""
    import asyncpg
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    from incident_contracts import TOPIC_EVENTS
    from incident_engine.adapters.postgres.migrate import migrate

    await migrate(dsn)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([TOPIC_EVENTS])
    finally:
        await admin.close()
    partitions = [p["partition"] for p in described["partitions"]]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(TOPIC_EVENTS, p) for p in partitions])
    finally:
        try:
            await consumer.stop()
        except asyncio.CancelledError:
            # aiokafka's group-less coordinator can leak the cancellation of its own background
            # task when stopped right after start; only a cancellation of ours must propagate.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO consumer_offsets (group_id, topic, kafka_partition, next_offset)"
            " VALUES ($1, $2, $3, $4)",
            [(group, TOPIC_EVENTS, tp.partition, offset) for tp, offset in ends.items()],
        )
    finally:
        await conn.close()

"""The intake as a child process, the real Alertmanager, and a reader of incidents.events."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from devstack.engine import spawn_cli
from devstack.process import free_port
from incident_contracts import TOPIC_EVENTS


def spawn_intake(
    kafka: str, dsn: str, integrations: Path, log: Path, **env: str
) -> tuple[subprocess.Popen[bytes], int]:
    """`incidents intake` on a free loopback port; returns the process and its port."""
    port = free_port()
    environment = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "DATABASE_URL": dsn,
        "INTAKE_HTTP_PORT": str(port),
        "INTAKE_INTEGRATIONS_FILE": str(integrations),
        "OTEL_TRACES_EXPORTER": "none",
        **env,
    }
    return spawn_cli(["intake"], environment, log), port


async def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    """Wait until `url` answers 200, failing with the process's log if it exits."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise AssertionError(f"{url} not ready in time:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a child process we started, then kill it if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


ALERTMANAGER_CONFIG = """
route:
  receiver: intake
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 2s
receivers:
  - name: intake
    webhook_configs:
      - url: {url}
        send_resolved: true
        http_config:
          authorization: {{type: Bearer, credentials: {token}}}
"""


def spawn_alertmanager(
    binary: Path, home: Path, intake_url: str, token: str
) -> tuple[subprocess.Popen[bytes], int]:
    """The real Alertmanager with one webhook receiver pointing at the intake; returns it and its port."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "alertmanager.yml"
    config.write_text(ALERTMANAGER_CONFIG.format(url=intake_url, token=token))
    port = free_port()
    with open(home / "alertmanager.log", "ab") as out:
        proc = subprocess.Popen(
            [
                str(binary), f"--config.file={config}", f"--storage.path={home / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address=", "--log.level=info",
            ],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return proc, port


class EventsReader:
    """Reads incidents.events from its current end in the background; keeps what a predicate wants."""

    def __init__(self, bootstrap: str, keep: Callable[[dict[str, Any]], bool]) -> None:
        self.bootstrap, self.keep = bootstrap, keep
        self.events: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventsReader:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, metadata_max_age_ms=1000
        )
        await self._consumer.start()
        partitions = await self._partitions()
        self._consumer.assign(partitions)
        ends = await self._consumer.end_offsets(partitions)
        for tp, offset in ends.items():
            self._consumer.seek(tp, offset)
        self._task = asyncio.create_task(self._run())
        return self

    async def _partitions(self) -> list[TopicPartition]:
        for _ in range(100):
            found = self._consumer.partitions_for_topic(TOPIC_EVENTS)
            if found:
                return [TopicPartition(TOPIC_EVENTS, p) for p in sorted(found)]
            await self._consumer._client.force_metadata_update()  # the topic may be brand new
            await asyncio.sleep(0.1)
        raise AssertionError(f"{TOPIC_EVENTS} has no partitions")

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        with contextlib.suppress(asyncio.CancelledError):
            await self._consumer.stop()

    async def _run(self) -> None:
        from aiokafka.errors import KafkaError

        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200)
            except KafkaError:
                await asyncio.sleep(0.5)
                continue
            for records in batch.values():
                for record in records:
                    event = orjson.loads(record.value)
                    event["_headers"] = {k: v.decode() for k, v in record.headers or ()}
                    event["_key"] = record.key.decode() if record.key else None
                    if self.keep(event):
                        self.events.append(event)

    def of(self, type_: str) -> list[dict[str, Any]]:
        """The kept events of a type."""
        return [e for e in self.events if e["type"] == type_]

    async def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        """Wait until `check()` holds, else fail with what was read."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(
            f"timed out waiting for {what}; read: {[(e['type'], e['subject']) for e in self.events]}"
        )


async def ensure_events_topic(bootstrap: str) -> None:
    """incidents.events with the engine's partitioning, created if it does not exist yet."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(TOPIC_EVENTS, num_partitions=6, replication_factor=1)])
    finally:
        await admin.close()

"""Shared by the benchmarks: the engine as a child process, its status and memory, result output."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from devstack.engine import spawn_engine as devstack_spawn_engine
from incident_contracts import TOPIC_BREACHES, TOPIC_EVENTS, TOPIC_REJECTED, TOPIC_STATE

PARTITIONS = 6


def spawn_engine(kafka: str, dsn: str, group: str, log_file: Path) -> tuple[subprocess.Popen[bytes], int]:
    """`incidents serve` as a child process (so it can be SIGKILLed and measured alone); with its port."""
    return devstack_spawn_engine(
        kafka, dsn, group, log_file, INCIDENTS_TOPIC_PARTITIONS=str(PARTITIONS), INCIDENTS_LOG_LEVEL="WARNING"
    )


async def wait_status(
    port: int,
    proc: subprocess.Popen[bytes],
    check: Callable[[dict[str, Any]], bool],
    timeout: float = 300.0,
    every: float = 0.05,
) -> dict[str, Any]:
    """Poll /readyz until `check(status)` holds (status has ready, partitions, timers, batches)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5.0) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"engine exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                status = (await client.get(f"http://127.0.0.1:{port}/readyz")).json()
                if check(status):
                    return status
            await asyncio.sleep(every)
    raise TimeoutError("engine status condition not reached in time")


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def ensure_topics(bootstrap: str, replicas: int = 1) -> None:
    """The contract's topics with the benchmark's partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        for topic in (TOPIC_EVENTS, TOPIC_STATE, TOPIC_BREACHES, TOPIC_REJECTED):
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([NewTopic(topic, PARTITIONS, replicas)])
    finally:
        await admin.close()


async def end_offsets(bootstrap: str) -> dict[int, int]:
    """The end offset of each input partition now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(TOPIC_EVENTS, p) for p in range(PARTITIONS)])
    finally:
        await consumer.stop()
    return {tp.partition: offset for tp, offset in ends.items()}


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values, nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def emit(result: dict[str, Any], json_path: Path | None) -> None:
    """Print the result as JSON (the runner collects it) and write it to `json_path` if given."""
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2)
    print(text.decode())
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_bytes(text)


def command_line() -> str:
    """How this benchmark was invoked (to reproduce the figure alone)."""
    script = Path(sys.argv[0])
    with contextlib.suppress(ValueError):
        script = script.resolve().relative_to(Path.cwd())
    return " ".join([".venv/bin/python", str(script), *sys.argv[1:]])

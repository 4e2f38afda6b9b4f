"""Loopback receivers for the notifier's tests: a scriptable HTTP server (plain asyncio) and outputs
built with the contract models."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from incident_contracts.models import FailoverRequired, SlaBreached, SlaWarning, StateChanged


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)
    status: int = 0


class Receiver:
    """An HTTP/1.1 server on 127.0.0.1. `script[path]` lists (status, headers) answers for each new
    attempt of one `webhook-id` (or of every request when there is none); past the list, 200."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.script: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self.seen: dict[tuple[str, str], int] = defaultdict(int)
        self.delay: dict[str, float] = {}
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[object]] = set()
        self.port = 0

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path == path]

    def acknowledged(self, path: str) -> list[str]:
        """webhook-ids (or bodies) answered 2xx at `path`, one entry per 2xx answer."""
        return [r.headers.get("webhook-id", r.body.decode()) for r in self.at(path) if 200 <= r.status < 300]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                _method, path, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Request(path, headers, body)
                self.requests.append(request)
                key = (path, headers.get("webhook-id", ""))
                answers = self.script.get(path, [])
                attempt = self.seen[key]
                self.seen[key] += 1
                status, extra = answers[attempt] if attempt < len(answers) else (200, {})
                if path in self.delay:
                    await asyncio.sleep(self.delay[path])
                request.status = status
                text = b"ok" if status < 300 else b"nope"
                head = [
                    f"HTTP/1.1 {status} X",
                    f"content-length: {len(text)}",
                    *(f"{k}: {v}" for k, v in extra.items()),
                ]
                writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + text)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            return
        finally:
            writer.close()


def state_changed(subject: str, from_state: str, to: str) -> dict[str, Any]:
    """An `incident.state.changed` output, built with its contract model."""
    model = StateChanged.model_validate({
        "specversion": "1.0", "id": uuid.uuid4().hex, "source": "/engine", "type": "incident.state.changed",
        "subject": subject, "time": datetime.now(UTC),
        "data": {"from": from_state, "to": to, "cause": "e9", "policy": "livepro-1", "severity": "critical",
                 "region": "au"},
    })  # fmt: skip
    return dict(orjson.loads(model.model_dump_json(by_alias=True, exclude_none=True)))


def outputs(prefix: str, count: int = 1, kind: str = "breached") -> list[dict[str, Any]]:
    """Output CloudEvents built (and so validated) with the contract models."""
    now = datetime.now(UTC)
    events = []
    for i in range(count):
        common = {
            "specversion": "1.0",
            "id": uuid.uuid4().hex,
            "source": "/engine",
            "subject": f"INC-{prefix}-{i}",
            "time": now,
        }
        data = {"policy": "livepro-1", "severity": "critical", "region": "au",
                "summary": f"{prefix} down {i}", "source": "/channels/phone/au"}  # fmt: skip
        if kind == "warning":
            model: Any = SlaWarning(
                type="incident.sla.warning",
                data={
                    **data,
                    "clock": "ack",
                    "threshold": 0.8,
                    "due_at": now,
                    "deadline": now + timedelta(minutes=3),
                },
                **common,
            )
        elif kind == "failover":
            model = FailoverRequired(
                type="incident.failover.required", data={**data, "due_at": now}, **common
            )
        else:
            due = now - timedelta(minutes=2)
            model = SlaBreached(
                type="incident.sla.breached", data={**data, "clock": "ack", "due_at": due}, **common
            )
        events.append(orjson.loads(model.model_dump_json(by_alias=True, exclude_none=True)))
    return events


async def produce(
    bootstrap: str, topic: str, events: list[dict[str, Any]], headers: list[tuple[str, bytes]] | None = None
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for event in events:
            key = event["subject"].encode()
            await producer.send_and_wait(topic, orjson.dumps(event), key=key, headers=headers)
    finally:
        await producer.stop()


async def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")

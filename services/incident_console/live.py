"""Live updates: one Kafka reader per process fans the engine's outputs out to the SSE clients.

The reader has no consumer group and starts at the end of the output topics, so every replica's
console sees the changes of every partition (whichever replica committed them). It starts with the
first SSE client. Rejections are also kept (a bounded number per incident) for the incident pages,
since dead letters are not stored in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from datetime import UTC, datetime
from typing import Any

import orjson

from incident_console.backend import TimelineEntry
from incident_contracts import TOPIC_BREACHES, TOPIC_REJECTED, TOPIC_STATE

log = logging.getLogger(__name__)
TOPICS = (TOPIC_STATE, TOPIC_BREACHES, TOPIC_REJECTED)
_QUEUE_SIZE = 256
_KEEP_INCIDENTS = 2000  # incidents whose recent rejections are kept
_KEEP_PER_INCIDENT = 50


class LiveHub:
    """Fan-out of the output topics to subscribers (asyncio queues of small JSON-able dicts)."""

    def __init__(self, kafka_options: dict[str, Any]) -> None:
        self.kafka_options = kafka_options
        self.subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.rejections: OrderedDict[str, deque[TimelineEntry]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self.started = asyncio.Event()  # the reader is positioned at the end of every topic

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        """A new subscriber's queue; starts the reader on first use."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(_QUEUE_SIZE)
        self.subscribers.add(queue)
        if self._task is None or self._task.done():
            self.started.clear()
            self._task = asyncio.create_task(self._run(), name="console-live")
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        """Forget a subscriber (its connection closed)."""
        self.subscribers.discard(queue)

    def rejected(self, incident_id: str) -> list[TimelineEntry]:
        """The rejections of an incident seen since the reader started (oldest first)."""
        return list(self.rejections.get(incident_id, ()))

    async def stop(self) -> None:
        """Stop the reader."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None

    def publish(self, message: dict[str, Any]) -> None:
        """Hand one update to every subscriber; a subscriber that does not keep up gets a `resync`."""
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    while True:
                        queue.get_nowait()
                queue.put_nowait({"kind": "resync"})

    def take(self, topic: str, value: bytes | None) -> None:
        """One output record: remember a rejection, tell the subscribers."""
        if not value:
            return
        try:
            out = orjson.loads(value)
            data = out.get("data") or {}
            message = {"kind": topic.rsplit(".", 1)[-1], "type": out["type"], "subject": out.get("subject")}
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return  # not ours to judge: the engine writes these topics
        if topic == TOPIC_STATE:
            message["to"] = data.get("to")
        elif topic == TOPIC_BREACHES:
            message["clock"] = data.get("clock")
        else:
            entry = _rejection_entry(out, data)
            message["reason"] = data.get("reason")
            message["detail"] = entry.detail
            message["event_id"] = entry.event_id
            if message["subject"]:
                self._keep(message["subject"], entry)
        self.publish(message)

    def _keep(self, incident_id: str, entry: TimelineEntry) -> None:
        kept = self.rejections.get(incident_id)
        if kept is None:
            kept = self.rejections[incident_id] = deque(maxlen=_KEEP_PER_INCIDENT)
            while len(self.rejections) > _KEEP_INCIDENTS:
                self.rejections.popitem(last=False)
        kept.append(entry)

    async def _run(self) -> None:
        from aiokafka import AIOKafkaConsumer
        from aiokafka.errors import KafkaError

        while True:  # Kafka away (a broker restart): try again, the clients resync when we are back
            consumer = AIOKafkaConsumer(
                *TOPICS, group_id=None, auto_offset_reset="latest", metadata_max_age_ms=5000,
                client_id="incident-console", **self.kafka_options,
            )  # fmt: skip
            try:
                await consumer.start()
                await _at_end(consumer)
                self.started.set()
                self.publish({"kind": "resync"})  # what happened while we were away: re-read
                while True:
                    batch = await consumer.getmany(timeout_ms=500)
                    for records in batch.values():
                        for record in records:
                            self.take(record.topic, record.value)
            except (KafkaError, OSError) as exc:
                log.warning("console live updates: Kafka unavailable (%s); retrying", exc)
                await asyncio.sleep(2.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()


async def _at_end(consumer: Any) -> None:
    """Wait until every partition of the topics is assigned and positioned (at its end)."""
    for _ in range(100):
        assigned = consumer.assignment()
        if assigned and {tp.topic for tp in assigned} >= set(TOPICS):
            for tp in assigned:
                await consumer.position(tp)
            return
        await asyncio.sleep(0.1)


def _rejection_entry(out: dict[str, Any], data: dict[str, Any]) -> TimelineEntry:
    original = data.get("original")
    event: dict[str, Any] = {}
    if isinstance(original, dict):
        event = original
    elif isinstance(original, str):
        with contextlib.suppress(orjson.JSONDecodeError, TypeError):
            decoded = orjson.loads(original)
            event = decoded if isinstance(decoded, dict) else {}
    moment = out.get("time") or event.get("time")
    try:
        at = datetime.fromisoformat(str(moment)) if moment else datetime.now(UTC)
    except ValueError:
        at = datetime.now(UTC)
    reason = data.get("reason", "?")
    detail = data.get("detail") or ""
    return TimelineEntry(
        time=at,
        type=str(event.get("type", "?")),
        channel=str(event.get("source", "?")),
        event_id=str(event.get("id", "")),
        accepted=False,
        detail=f"{reason}: {detail}" if detail else str(reason),
        user=event.get("user") if isinstance(event.get("user"), str) else None,
    )

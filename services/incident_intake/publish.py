"""Input CloudEvents to `incidents.events`, answered only once Kafka acknowledged them (acks=all)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import orjson
from aiokafka.errors import KafkaError
from opentelemetry import trace

from incident_contracts import TOPIC_EVENTS
from incident_contracts.build import input_event
from incident_platform.kafka import durable_producer
from incident_platform.settings import PlatformSettings
from incident_platform.telemetry import inject_headers

__all__ = ["KafkaPublisher", "MemoryPublisher", "Publisher", "Unavailable", "envelope"]

_log = logging.getLogger(__name__)
CONTENT_TYPE = ("content-type", b"application/cloudevents+json")


class Unavailable(Exception):
    """Kafka (or PostgreSQL) cannot take the events now: the sender should retry (503)."""


def envelope(event: dict[str, Any], source: str) -> dict[str, Any]:
    """The structured input CloudEvent of a decided event, checked against the contract (as
    `incidents publish` builds it); raises InputError when the engine would dead-letter it."""
    return input_event(
        event["type"], event["subject"], source=source, event_id=event["id"], data=event["data"],
        time=event["time"],
    )  # fmt: skip


class Publisher(Protocol):
    """The port: put events on incidents.events and return once they are durable."""

    async def publish(self, events: list[dict[str, Any]]) -> None:
        """Raise Unavailable when they could not be made durable in time."""
        ...


class MemoryPublisher:
    """`Publisher` in memory for unit tests; `down = True` makes it refuse like an unreachable Kafka."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.down = False

    async def publish(self, events: list[dict[str, Any]]) -> None:
        """See `Publisher.publish`."""
        if self.down:
            raise Unavailable("Kafka is unreachable (memory twin)")
        self.events.extend(events)


class KafkaPublisher:
    """`Publisher` on Kafka: the durable producer, each event's span a child of the request's."""

    def __init__(
        self, settings: PlatformSettings, timeout_ms: int, tracer: trace.Tracer | None = None
    ) -> None:
        self.timeout = timeout_ms / 1000
        self.tracer = tracer or trace.get_tracer("incident_intake")
        self.producer = durable_producer(settings, request_timeout_ms=timeout_ms)
        self.started = False
        self._starter: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the producer; when Kafka is unreachable keep trying in the background (answers are 503)."""
        self._starter = asyncio.create_task(self._start_until_done())

    async def _start_until_done(self) -> None:
        delay = 0.5
        while not self.started:
            try:
                await self.producer.start()
                self.started = True
            except KafkaError as exc:
                _log.warning("Kafka is unreachable, retrying in %.0f s: %s", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def stop(self) -> None:
        """Stop trying and flush the producer."""
        if self._starter is not None:
            self._starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starter
        await self.producer.stop()

    async def ping(self) -> None:
        """Raise Unavailable unless the cluster answers a metadata request."""
        if not self.started:
            raise Unavailable("the Kafka producer has not connected yet")
        try:
            await asyncio.wait_for(self.producer.client.fetch_all_metadata(), min(self.timeout, 5.0))
        except (KafkaError, TimeoutError) as exc:
            raise Unavailable(f"Kafka does not answer: {exc or type(exc).__name__}") from None

    async def publish(self, events: list[dict[str, Any]]) -> None:
        """See `Publisher.publish`: all of `events` sent, then awaited together, within the timeout."""
        if not self.started:
            raise Unavailable("Kafka is unreachable (the producer has not connected yet)")
        try:
            async with asyncio.timeout(self.timeout):
                futures = []
                for event in events:
                    with self.tracer.start_as_current_span(
                        f"publish {event['type']}", kind=trace.SpanKind.PRODUCER
                    ) as span:
                        span.set_attribute("incident.id", event["subject"])
                        span.set_attribute("cloudevents.event_id", event["id"])
                        futures.append(
                            await self.producer.send(
                                TOPIC_EVENTS,
                                orjson.dumps(event),
                                key=event["subject"].encode(),
                                headers=inject_headers([CONTENT_TYPE]),
                            )
                        )
                await asyncio.gather(*futures)
        except (KafkaError, TimeoutError) as exc:
            raise Unavailable(f"Kafka did not acknowledge the events: {exc or type(exc).__name__}") from None

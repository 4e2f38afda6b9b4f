"""What the email and phone channels share: input CloudEvents, ids, the Kafka publisher, numbers.

Events are built exactly as `incidents publish` builds them (validated against the contract before
they are sent) and published with a durable producer: the caller answers its sender only after
`Publisher.publish` returned, i.e. after Kafka acknowledged every event (acks=all).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from datetime import UTC, datetime
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from incident_contracts import TOPIC_EVENTS, parse_event
from incident_contracts.bounds import MAX_TEXT_LENGTH
from incident_platform.kafka import durable_producer
from incident_platform.settings import PlatformSettings
from incident_platform.telemetry import inject_headers

__all__ = [
    "KafkaUnavailable",
    "Publisher",
    "clean_text",
    "derived_id",
    "format_number",
    "input_event",
    "parse_number",
]

_log = logging.getLogger(__name__)
_NUMBER: Final = re.compile(r"\bINC-(\d{1,12})\b", re.IGNORECASE)
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def clean_text(text: str, limit: int = MAX_TEXT_LENGTH) -> str:
    """Free text fit for the contract: control characters (but tab and line ends) dropped, bounded."""
    return _CONTROL.sub("", text)[:limit]


class KafkaUnavailable(Exception):
    """Kafka did not acknowledge the events in time: nothing may be confirmed to the sender."""


def derived_id(prefix: str, *parts: str, length: int = 24) -> str:
    """A stable id from the sender's own keys (Message-ID, CallSid + step): a retry is the same id."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return f"{prefix}-{digest[:length]}"


def format_number(number: int) -> str:
    """The human-friendly incident number people read, say and type: `INC-1042`."""
    return f"INC-{number}"


def parse_number(text: str) -> int | None:
    """The number of the first `INC-<digits>` token in `text`, or None."""
    found = _NUMBER.search(text)
    return int(found.group(1)) if found else None


def input_event(
    event_type: str,
    incident: str,
    *,
    source: str,
    event_id: str,
    data: dict[str, Any],
    time: datetime | None = None,
    extensions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A structured input CloudEvent `incident.<event_type>`, validated against the contract
    (as `incidents publish` builds it); raises `incident_contracts.InputError` when invalid."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": f"incident.{event_type}",
        "subject": incident,
        "time": (time or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": {k: v for k, v in data.items() if v is not None},
        **(extensions or {}),
    }
    parse_event(orjson.dumps(event))  # refuse to publish what the engine would dead-letter
    return event


class Publisher:
    """Publishes input events to `incidents.events` (key = incident id, trace context in headers).

    The producer starts on first use and again after a failure, so an intake started while Kafka is
    down answers "try later" (SMTP 451, HTTP 503) instead of not starting, and recovers by itself."""

    def __init__(self, settings: PlatformSettings, *, timeout: float = 10.0, **overrides: Any) -> None:
        self.settings = settings
        self.timeout = timeout
        self.overrides = overrides
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def publish(self, events: list[dict[str, Any]]) -> None:
        """Send `events` in order and wait for Kafka's acknowledgement of each (KafkaUnavailable)."""
        try:
            await asyncio.wait_for(self._send(events), self.timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            await self._reset()
            raise KafkaUnavailable(
                f"Kafka did not acknowledge the event: {exc or type(exc).__name__}"
            ) from exc

    async def _send(self, events: list[dict[str, Any]]) -> None:
        producer = await self._started()
        headers = inject_headers([("content-type", b"application/cloudevents+json")])
        futures = [
            await producer.send(TOPIC_EVENTS, orjson.dumps(e), key=e["subject"].encode(), headers=headers)
            for e in events
        ]
        await asyncio.gather(*futures)

    async def _started(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._producer is None:
                ms = int(self.timeout * 1000)
                producer = durable_producer(self.settings, request_timeout_ms=ms, **self.overrides)
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
            return self._producer

    async def _reset(self) -> None:
        async with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), 5)
            except Exception:  # a producer that failed may fail to stop; it is dropped either way
                _log.debug("producer stop failed", exc_info=True)

    async def close(self) -> None:
        """Flush and stop the producer."""
        await self._reset()

"""The notifier: a Kafka consumer that schedules deliveries durably, and per-destination workers that
attempt them (bounded concurrency each, so a slow destination never holds the others or a partition).

Guarantees: the consumer commits a Kafka offset only after the deliveries of the messages before it
are in PostgreSQL (an idempotent insert on (output id, destination): a re-read output is not scheduled
twice). A worker claims due rows under a lease (`FOR UPDATE SKIP LOCKED`); a success is marked
before the lease ends, so nothing else resends it. The one window left — killed between the
receiver's 2xx and our update — resends after the lease: at least once, deduplicable by the receiver
on `webhook-id` (the output's id, the same on every attempt)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from incident_contracts import TOPIC_STATE
from incident_contracts.constants import NOTIFICATION_DEAD
from incident_contracts.envelope import stable_id
from incident_notifier.config import Destination, RoutingConfig
from incident_notifier.messages import pagerduty_events
from incident_notifier.routing import STATE_CHANGED, destinations_for
from incident_notifier.senders import DELIVERED, PERMANENT, Outcome, Senders
from incident_notifier.settings import NotifierSettings
from incident_notifier.store import RESOLVING, DeliveryStore, Row, migrate_notifier
from incident_platform.kafka import durable_producer, kafka_security
from incident_platform.postgres import create_pool
from incident_platform.telemetry import (
    Providers,
    carrier_of,
    create_providers,
    extract_context,
    link_from_carrier,
)

_log = logging.getLogger("incident_notifier")

DEAD_TYPE = NOTIFICATION_DEAD  # its model: incident_contracts.models.NotificationDead
DEAD_SOURCE = "/notifier"
# Destinations whose deliveries of one incident must land in order: a PagerDuty trigger retried after
# the resolve of its dedup key went through would open a page nothing closes. Webhooks, Slack and
# email promise no order per incident (each output carries its own time and state).
ORDERED_TYPES = frozenset({"pagerduty"})
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)


def backoff_seconds(
    attempts: int,
    base: float,
    cap: float,
    retry_after: float | None,
    retry_after_cap: float,
    rng: random.Random,
) -> float:
    """Delay before the next attempt: exponential (base * 2^(attempts-1), at most `cap`) with jitter
    (a random half to all of it); a receiver's Retry-After (cut to `retry_after_cap`) is a floor on
    top of it, never a shortcut: `Retry-After: 0` cannot spend every attempt in seconds."""
    ceiling = min(cap, base * 2 ** max(attempts - 1, 0))
    delay = ceiling * (0.5 + rng.random() / 2)
    if retry_after is not None:
        return max(delay, min(retry_after, retry_after_cap))
    return delay


def dead_letter(
    event: dict[str, Any], destination: Destination, attempts: int, error: str, resends: int = 0
) -> dict[str, Any]:
    """The dead letter of one delivery: its own deterministic id, the output quoted whole. A delivery
    sent again (`incidents notify resend`) that fails again has a new id (`resends` is part of it),
    so a consumer deduplicating on ids still sees it; a retried send of one death keeps its id."""
    output_id = str(event.get("id", ""))
    name = f"{output_id}/{destination.name}/dead" + (f"/{resends}" if resends else "")
    return {
        "specversion": "1.0",
        "id": stable_id(name),
        "source": DEAD_SOURCE,
        "type": DEAD_TYPE,
        "subject": event.get("subject"),
        "time": datetime.now(UTC).isoformat(),
        "datacontenttype": "application/json",
        "data": {
            "destination": destination.name,
            "destination_type": destination.type,
            "attempts": attempts,
            "last_error": error,
            "output": event,
        },
    }


class Metrics:
    def __init__(self, providers: Providers) -> None:
        meter = providers.meter_provider.get_meter("incident_notifier")
        self.deliveries = meter.create_counter(
            "notifier_deliveries_total",
            unit="{delivery}",
            description="Deliveries finished, by destination and outcome.",
        )
        self.attempts = meter.create_counter(
            "notifier_attempts_total",
            unit="{attempt}",
            description="Delivery attempts, by destination and result.",
        )
        self.latency = meter.create_histogram(
            "notifier_delivery_latency_seconds",
            unit="s",
            description="From the output's `time` to its delivery, by destination.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )
        self.skipped = meter.create_counter(
            "notifier_skipped_total",
            unit="{message}",
            description="Consumed messages that are no output event.",
        )


class Notifier:
    """Consume outputs, schedule their deliveries, deliver them. `start()`, then `stop()`."""

    def __init__(
        self, settings: NotifierSettings, config: RoutingConfig, providers: Providers | None = None
    ) -> None:
        self.settings = settings
        self.config = config
        self.providers = providers or create_providers("incident-notifier")
        self.metrics = Metrics(self.providers)
        self.tracer = self.providers.tracer_provider.get_tracer("incident_notifier")
        self._rng = random.Random()
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = {name: asyncio.Event() for name in config.destinations}
        self._stopping = asyncio.Event()
        self.assigned = False
        self.consumer: AIOKafkaConsumer | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        s = self.settings
        if s.incidents_notifier_lease_ms <= s.incidents_notifier_timeout_ms:
            raise ValueError(
                "INCIDENTS_NOTIFIER_LEASE_MS must exceed INCIDENTS_NOTIFIER_TIMEOUT_MS "
                "(else a slow attempt could be taken again while it runs)"
            )
        dsn = s.database_url.get_secret_value()
        await migrate_notifier(dsn)
        self.pool = await create_pool(dsn, max_size=8, **s.pool_timeouts())  # type: ignore[arg-type]
        self.store = DeliveryStore(self.pool)
        orphans = await self.store.pending_elsewhere(list(self.config.destinations))
        if orphans:
            _log.warning(
                "pending deliveries to destinations no longer configured stay pending until they are again",
                extra={"pending": orphans},
            )
        self.senders = Senders(
            timeout=s.incidents_notifier_timeout_ms / 1000,
            allow_private=s.incidents_notifier_allow_private,
            links_url=s.incidents_notifier_links_url,
        )
        self.producer = durable_producer(s)
        await self.producer.start()
        topics = [t.strip() for t in s.incidents_notifier_topics.split(",") if t.strip()]
        wants_state = any(STATE_CHANGED in r.match.get("type", ()) for r in self.config.routes)
        if wants_state and TOPIC_STATE not in topics:
            _log.warning(
                f"a route names {STATE_CHANGED}, but INCIDENTS_NOTIFIER_TOPICS lacks {TOPIC_STATE}: "
                "it matches nothing until the topic is added"
            )
        self.consumer = AIOKafkaConsumer(
            *topics,
            bootstrap_servers=s.kafka_bootstrap_servers,
            group_id=s.incidents_notifier_group,
            enable_auto_commit=False,
            auto_offset_reset=s.incidents_notifier_start,
            **kafka_security(s),
        )
        await self.consumer.start()
        self._tasks.append(asyncio.create_task(self._consume(), name="notifier-consume"))
        for destination in self.config.destinations.values():
            self._tasks.append(
                asyncio.create_task(self._work(destination), name=f"notifier-{destination.name}")
            )
        _log.info(
            "notifier started", extra={"topics": topics, "destinations": list(self.config.destinations)}
        )

    async def stop(self) -> None:
        self._stopping.set()
        for wake in self._wake.values():
            wake.set()
        # Workers leave their loop and let the attempts in flight finish (each within its timeout),
        # so that a success is recorded rather than left to its lease; then anything left is cancelled.
        workers = [t for t in self._tasks if t.get_name() != "notifier-consume"]
        if workers:
            await asyncio.wait(workers, timeout=self.settings.incidents_notifier_timeout_ms / 1000 + 2)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        for closer in (
            self.consumer.stop() if self.consumer else None,
            self.producer.stop() if hasattr(self, "producer") else None,
            self.senders.close() if hasattr(self, "senders") else None,
            self.pool.close() if hasattr(self, "pool") else None,
        ):
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer

    async def ready(self) -> tuple[bool, str]:
        """Ready when partitions are assigned and PostgreSQL answers."""
        stopped = [task.get_name() for task in self._tasks if task.done()]
        if stopped:
            return False, f"stopped: {', '.join(stopped)}"
        if self.consumer is None or not self.consumer.assignment():
            return False, "no partitions assigned yet"
        try:
            await self.pool.fetchval("SELECT 1")
        except Exception as exc:
            return False, f"PostgreSQL: {type(exc).__name__}"
        return True, "ready"

    # ------------------------------------------------------------------ consume

    def _rows(self, value: bytes | None, headers: Any, where: str) -> list[Row]:
        try:
            event = orjson.loads(value or b"")
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
            output_id, subject, event_type = str(event["id"]), str(event["subject"]), str(event["type"])
            time = datetime.fromisoformat(str(event["time"]))
        except (ValueError, KeyError, TypeError) as exc:
            self.metrics.skipped.add(1)
            _log.warning(
                "skipped a message that is no output event", extra={"at": where, "error": str(exc)[:200]}
            )
            return []
        names = destinations_for(self.config, event)
        if not names:
            return []
        span_context = trace.get_current_span(extract_context(headers)).get_span_context()
        carrier = carrier_of(span_context)
        return [(output_id, name, subject, event_type, time, event, carrier) for name in names]

    async def _consume(self) -> None:
        assert self.consumer is not None
        consumer = self.consumer
        while not self._stopping.is_set():
            try:
                batch = await consumer.getmany(timeout_ms=500, max_records=500)
            except Exception:
                # aiokafka retries connections itself; anything it raises is logged and read again
                _log.exception("could not read the output topics; retrying")
                await asyncio.sleep(1.0)
                continue
            self.assigned = bool(consumer.assignment())
            if not batch:
                continue
            rows: list[Row] = []
            for tp, messages in batch.items():
                for m in messages:
                    rows.extend(self._rows(m.value, m.headers, f"{tp.topic}/{tp.partition}/{m.offset}"))
            try:
                if rows:
                    await self.store.enqueue(rows)
                await consumer.commit()
            except Exception:
                # Not committed: read the batch again (the insert is idempotent).
                _log.exception("could not schedule deliveries; the batch is read again")
                for tp, messages in batch.items():
                    with contextlib.suppress(Exception):  # not ours any more after a rebalance: fine
                        consumer.seek(TopicPartition(tp.topic, tp.partition), messages[0].offset)
                await asyncio.sleep(1.0)
                continue
            for name in {row[1] for row in rows}:
                self._wake[name].set()

    # ------------------------------------------------------------------ deliver

    async def _work(self, destination: Destination) -> None:
        s = self.settings
        limit = s.incidents_notifier_concurrency
        lease = s.incidents_notifier_lease_ms / 1000
        poll = s.incidents_notifier_poll_ms / 1000
        wake = self._wake[destination.name]
        inflight: set[asyncio.Task[None]] = set()
        while not self._stopping.is_set():
            wake.clear()
            free = limit - len(inflight)
            if free > 0:
                try:
                    rows = await self.store.claim(
                        destination.name, free, lease, ordered=destination.type in ORDERED_TYPES
                    )
                except Exception:
                    _log.exception("could not claim deliveries", extra={"destination": destination.name})
                    rows = []
                for row in rows:
                    task = asyncio.create_task(self._deliver(destination, row))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                if len(rows) == free:
                    await asyncio.sleep(0)
                    continue  # more may be due
            waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(wake.wait()), *inflight}
            await asyncio.wait(waiters, timeout=poll, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                if waiter not in inflight and not waiter.done():
                    waiter.cancel()
        try:
            if inflight:
                await asyncio.wait(inflight)
        finally:
            for task in inflight:
                task.cancel()

    async def _deliver(self, destination: Destination, row: Any) -> None:
        event: dict[str, Any] = row["event"]
        attempts: int = row["attempts"]
        output_id = row["output_id"]
        link = link_from_carrier(row["trace"], {"output.id": output_id})
        attributes = {
            "notifier.destination": destination.name,
            "notifier.destination_type": destination.type,
            "notifier.attempt": attempts,
            "cloudevents.event_id": output_id,
            "cloudevents.event_type": str(event.get("type")),
            "cloudevents.event_subject": str(event.get("subject")),
        }
        with self.tracer.start_as_current_span(
            f"notify {destination.type}",
            kind=SpanKind.CLIENT,
            links=[link] if link else None,
            attributes=attributes,
        ) as span:
            try:
                reason = await self._superseded(destination, row)
            except Exception:
                _log.exception("could not check for a later resolve", extra={"output_id": output_id})
                return  # the row keeps its lease: attempted again when it ends
            if reason is not None:
                span.set_attribute("notifier.outcome", "superseded")
                await self._skip(destination, row, attempts, reason)
                return
            outcome = await self.senders.attempt(destination, event)
            span.set_attribute("notifier.outcome", outcome.status)
            try:
                await self._settle(destination, row, event, attempts, outcome)
            except Exception:
                # The row keeps its lease: it is attempted again when the lease ends (at least once).
                _log.exception("could not record a delivery outcome", extra={"output_id": output_id})

    async def _superseded(self, destination: Destination, row: Any) -> str | None:
        """Why a PagerDuty trigger must not be sent: a later output of its incident that resolves the
        same dedup key was already delivered (it was scheduled after the resolve: e.g. the state
        topic read ahead of the breaches topic). None when it is to be sent."""
        if destination.type not in ORDERED_TYPES or row["event_type"] in RESOLVING:
            return None
        keys = {page["dedup_key"] for page in pagerduty_events(row["event"], "", None)}
        for later in await self.store.later_resolving(row):
            resolved = {
                p["dedup_key"] for p in pagerduty_events(later, "", None) if p["event_action"] == "resolve"
            }
            if keys & resolved:
                return (
                    f"superseded: {', '.join(sorted(keys & resolved))} already resolved by {later.get('id')}"
                )
        return None

    async def _skip(self, destination: Destination, row: Any, attempts: int, reason: str) -> None:
        try:
            if await self.store.superseded(row["output_id"], destination.name, attempts, reason):
                self.metrics.deliveries.add(1, {"destination": destination.name, "outcome": "superseded"})
                _log.info(
                    "delivery superseded, not sent",
                    extra={"destination": destination.name, "output_id": row["output_id"], "reason": reason},
                )
            else:
                self._lost(destination, row, attempts, "superseded")
        except Exception:
            _log.exception("could not record a delivery outcome", extra={"output_id": row["output_id"]})

    def _lost(self, destination: Destination, row: Any, attempts: int, outcome: str) -> None:
        _log.warning(
            "lease lost: a later attempt took this delivery, its outcome is not recorded",
            extra={
                "destination": destination.name,
                "output_id": row["output_id"],
                "attempts": attempts,
                "outcome": outcome,
            },
        )

    async def _settle(
        self, destination: Destination, row: Any, event: dict[str, Any], attempts: int, outcome: Outcome
    ) -> None:
        s = self.settings
        name = destination.name
        self.metrics.attempts.add(1, {"destination": name, "result": outcome.status})
        if outcome.status == DELIVERED:
            if not await self.store.delivered(row["output_id"], name, attempts):
                self._lost(destination, row, attempts, "delivered")
                return
            self.metrics.deliveries.add(1, {"destination": name, "outcome": "delivered"})
            self.metrics.latency.record(
                max(0.0, (datetime.now(UTC) - row["event_time"]).total_seconds()), {"destination": name}
            )
            return
        error = outcome.error or "failed"
        if outcome.status == PERMANENT or attempts >= s.incidents_notifier_max_attempts:
            # The lease, renewed if still ours, outlasts the dead letter's send (bounded to half of
            # it): a slow Kafka cannot let a second attempt run meanwhile, whose success a late
            # `dead` would then overwrite (both are fenced by the attempt anyway).
            lease = s.incidents_notifier_lease_ms / 1000
            if not await self.store.hold(row["output_id"], name, attempts, lease):
                self._lost(destination, row, attempts, "dead")
                return
            letter = dead_letter(event, destination, attempts, error, int(row.get("resends") or 0))
            async with asyncio.timeout(lease / 2):
                await self.producer.send_and_wait(
                    s.incidents_notifier_dead_letter_topic,
                    orjson.dumps(letter),
                    key=str(event.get("subject", "")).encode(),
                    headers=[("content-type", b"application/cloudevents+json")],
                )
            if not await self.store.dead(row["output_id"], name, attempts, error):
                self._lost(destination, row, attempts, "dead")
                return
            self.metrics.deliveries.add(1, {"destination": name, "outcome": "dead"})
            _log.warning(
                "delivery dead-lettered",
                extra={
                    "destination": name,
                    "output_id": row["output_id"],
                    "attempts": attempts,
                    "error": error,
                },
            )
            return
        delay = backoff_seconds(
            attempts,
            s.incidents_notifier_backoff_base_ms / 1000,
            s.incidents_notifier_backoff_max_ms / 1000,
            outcome.retry_after,
            s.incidents_notifier_retry_after_max_ms / 1000,
            self._rng,
        )
        if not await self.store.reschedule(row["output_id"], name, attempts, delay, error):
            self._lost(destination, row, attempts, "retry")
            return
        _log.info(
            "delivery rescheduled",
            extra={
                "destination": name,
                "output_id": row["output_id"],
                "attempts": attempts,
                "in_s": round(delay, 3),
                "error": error,
            },
        )

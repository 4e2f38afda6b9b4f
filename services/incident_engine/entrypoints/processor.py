"""One batch: input records and due timers in, one atomic BatchWrite out (through the shared domain)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import orjson
from opentelemetry.trace import Span, SpanKind, Tracer

from incident_contracts import TOPIC_EVENTS, parse_event
from incident_contracts.constants import INCIDENT_REJECTED
from incident_contracts.envelope import OutputEvent
from incident_contracts.errors import DecodeError, InputError, SchemaError
from incident_contracts.fast import FastEvent, decode_fast
from incident_contracts.models import CloudEvent
from incident_engine.adapters.store import BatchWrite, EventStore, LoggedEvent, OutboxRow, TimerRow
from incident_engine.adapters.telemetry import carrier_of, extract_context, link_from_carrier
from incident_engine.domain import Decision, Incident, SlaDomain, reject_input

TRACE_HEADERS = ("traceparent", "tracestate")
# A validated input event: the pydantic model, or (the common shape, decoded ~5x cheaper) msgspec's.
Event = CloudEvent | FastEvent
_YIELD_EVERY = 32  # records decided between two turns of the event loop


class InputRecord(Protocol):
    """What the processor needs of a Kafka record (aiokafka's ConsumerRecord has it)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass
class BatchResult:
    """What a committed batch did, for metrics, traces and the timer heap."""

    write: BatchWrite
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, outcome)
    outputs: list[OutputEvent] = field(default_factory=list)
    fired_lateness: list[float] = field(default_factory=list)  # seconds, fire time - due time
    next_due: dict[str, tuple[int, datetime | None]] = field(default_factory=dict)  # id -> (partition, due)


class IncidentCache:
    """Incidents of the owned partitions kept between batches, bounded; cleared on any doubt."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self.items: dict[str, Incident] = {}

    def get(self, incident_id: str) -> Incident | None:
        """The cached incident, if any."""
        return self.items.get(incident_id)

    def put(self, incident: Incident) -> None:
        """Keep an incident (see `trim` for the bound)."""
        self.items[incident.id] = incident

    def trim(self, protect: set[str]) -> None:
        """Past the limit, drop the oldest quarter, except incidents whose changes are not committed."""
        if len(self.items) < self.limit:
            return
        for key in list(self.items)[: self.limit // 4]:
            if key not in protect:
                del self.items[key]

    def forget(self, incident_ids: Sequence[str] | None = None) -> None:
        """Drop some incidents, or all."""
        if incident_ids is None:
            self.items.clear()
        else:
            for incident_id in incident_ids:
                self.items.pop(incident_id, None)


class BatchProcessor:
    """Turns a batch into one BatchWrite with the domain; commits it through the store."""

    def __init__(
        self,
        domain: SlaDomain,
        store: EventStore,
        group_id: str,
        *,
        max_message_bytes: int = 1_048_576,
        cache: IncidentCache | None = None,
        tracer: Tracer | None = None,
        root_sample_ratio: float | None = None,
    ) -> None:
        self.domain = domain
        self.store = store
        self.group_id = group_id
        self.max_message_bytes = max_message_bytes
        self.cache = cache if cache is not None else IncidentCache()
        self.tracer = tracer  # None: no spans (telemetry disabled), trace headers still propagate
        # Decide root sampling before making a span: an unsampled span still costs several µs per
        # event, and with the default sampler most events are unsampled roots.
        self.root_sample_ratio = root_sample_ratio
        self._random = random.Random()
        self.armed_traces: dict[str, dict[str, str]] = {}  # incident -> trace that armed its timers
        # Decided but not yet committed (a batch commits while the next one is decided).
        self.uncommitted_ids: set[str] = set()
        self.uncommitted_incidents: set[str] = set()
        # Ownership epoch of each owned input partition (set by the consume loop when it claims
        # them): stamped on every batch, whose transaction is refused once one of them is stale.
        self.epochs: dict[int, int] = {}

    async def process(
        self, records: Sequence[InputRecord], due: Sequence[tuple[str, int]], now: datetime
    ) -> BatchResult:
        """Decide and commit one batch: `due` lists (incident id, partition) whose timer is due."""
        result = await self.decide(records, due, now)
        await self.commit(result)
        return result

    async def decide(
        self, records: Sequence[InputRecord], due: Sequence[tuple[str, int]], now: datetime
    ) -> BatchResult:
        """Run a batch through the domain without writing it; its incidents go to the cache at once,
        so the next batch can be decided while this one commits (see `commit`, `abandon`)."""
        result = BatchResult(BatchWrite(self.group_id))
        parsed = [self._parse(record, now) for record in records]
        events = [p for p in parsed if not isinstance(p, OutputEvent)]
        ids = [e.id for e in events]
        wanted = {e.subject for e in events} | {incident_id for incident_id, _ in due}
        cache = self.cache
        states = {i: inc for i in wanted if (inc := cache.get(i)) is not None}
        known, loaded = await self.store.lookup(ids, [i for i in wanted if i not in states])
        states.update(loaded)
        decided_from = {incident_id: inc.seq for incident_id, inc in states.items()}  # before any change
        known.update(i for i in ids if i in self.uncommitted_ids)
        try:
            for n, (record, item) in enumerate(zip(records, parsed, strict=True), 1):
                if n % _YIELD_EVERY == 0:
                    # Let the previous batch's commit send its next statement (each of its round
                    # trips would otherwise wait for this loop): commit and decide overlap.
                    await asyncio.sleep(0)
                self._offset(result.write, record)
                if not isinstance(item, OutputEvent):
                    if item.id in known:
                        result.outcomes[(item.type, "ignored_repeat")] += 1
                        continue  # exactly-once effect: an id already applied is dropped silently
                    known.add(item.id)
                    self._apply_event(result, states, record, item, now)
                else:
                    result.outcomes[("(unreadable)", "rejected")] += 1
                    self._emit(result, [item], record.partition, _trace_of(record))
            for incident_id, partition in due:
                incident = states.get(incident_id)
                if incident is not None:
                    self._fire(result, incident, partition, now)
        except BaseException:
            self.abandon()
            raise
        write = result.write
        write.decided_from = {i: decided_from[i] for i in write.incidents if i in decided_from}
        epochs = self.epochs
        write.epochs = {p: epochs[p] for p in write.partitions() if p in epochs}
        for incident_id, (incident, _) in result.write.incidents.items():
            self.cache.put(incident)
            self.uncommitted_incidents.add(incident_id)
        self.uncommitted_ids.update(e.event_id for e in result.write.events)
        return result

    async def commit(self, result: BatchResult) -> None:
        """Write a decided batch (batches commit in the order they were decided)."""
        try:
            await self.store.commit(result.write)
        except BaseException:
            self.abandon()
            raise
        self.uncommitted_ids.difference_update(e.event_id for e in result.write.events)
        self.uncommitted_incidents.difference_update(result.write.incidents)
        done = [i for i, (inc, _) in result.write.incidents.items() if inc.state == "restored"]
        self.cache.forget([i for i in done if i not in self.uncommitted_incidents])
        self.cache.trim(protect=self.uncommitted_incidents)

    def abandon(self) -> None:
        """After a failed batch: forget everything not known to be committed (states changed in place)."""
        self.cache.forget()
        self.uncommitted_ids.clear()
        self.uncommitted_incidents.clear()

    def _parse(self, record: InputRecord, now: datetime) -> Event | OutputEvent:
        raw = record.value or b""
        if len(raw) > self.max_message_bytes:
            error: InputError = DecodeError(
                f"message of {len(raw)} bytes exceeds the limit of {self.max_message_bytes} bytes"
                f" (INCIDENTS_MAX_MESSAGE_BYTES); only its start is quoted"
            )
            return reject_input(error, raw, now, key=record.key, origin=_origin(record))
        if record.value is None:
            return reject_input(
                DecodeError("empty message (tombstone)"), raw, now, key=record.key, origin=_origin(record)
            )
        headers = record.headers
        event: Event | None = None
        if raw[:1] == b"{" and not any(name == "ce_specversion" for name, _ in headers or ()):
            event = decode_fast(raw)  # None: not the common shape, pydantic decides and explains
        try:
            if event is None:
                event = parse_event(raw, headers)
        except InputError as exc:
            return reject_input(exc, raw, now, key=record.key, origin=_origin(record))
        key = record.key.decode(errors="replace") if record.key is not None else None
        if key != event.subject:
            # The key decides the partition, and one incident must live in one partition.
            error = SchemaError(
                f"Kafka key {key!r} differs from subject {event.subject!r}: the key must be the incident id",
                event_id=event.id,
                subject=event.subject,
            )
            return reject_input(error, raw, now, key=record.key, origin=event.id)
        return event

    def _apply_event(
        self,
        result: BatchResult,
        states: dict[str, Incident],
        record: InputRecord,
        event: Event,
        now: datetime,
    ) -> None:
        incident = states.get(event.subject)
        before = incident.state if incident is not None else None
        span = self._span_for(record, event) if self.tracer is not None else None
        trace = _carrier(span) if span is not None else _trace_of(record)
        decision = self.domain.handle(incident, event, now, record.value)  # type: ignore[arg-type]
        outcome = "accepted" if decision.accepted else "rejected"
        result.outcomes[(event.type, outcome)] += 1
        if decision.accepted and decision.incident is not None:
            inc = decision.incident
            states[inc.id] = inc
            if incident is None:
                result.write.created.add(inc.id)
            if trace:
                self.armed_traces[inc.id] = trace  # a timer firing later links back to this trace
            result.write.events.append(
                LoggedEvent(
                    incident_id=inc.id, seq=inc.seq, event_id=event.id, type=event.type,
                    source=event.source, event_time=event.time, processed_at=now,
                    partition=record.partition, offset=record.offset,
                    envelope=_structured(record, event), trace_context=trace,
                )
            )  # fmt: skip
        self._record(result, decision, record.partition, now, trace, trace)
        if span is not None:
            after = decision.incident.state if decision.incident is not None else None
            span.set_attributes({"incident.from_state": before or "", "incident.to_state": after or "",
                                 "incident.outcome": outcome})  # fmt: skip
            span.end()

    def _span_for(self, record: InputRecord, event: Event) -> Span | None:
        assert self.tracer is not None
        has_parent = any(name == "traceparent" for name, _ in record.headers or ())
        if not has_parent and not self._sample_root():
            return None  # an unsampled root: no span built at all
        return self.tracer.start_span(
            f"{TOPIC_EVENTS} process",
            context=extract_context(record.headers) if has_parent else None,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka", "messaging.destination.name": record.topic,
                "messaging.kafka.partition": record.partition, "messaging.kafka.offset": record.offset,
                "incident.id": event.subject, "incident.event_type": event.type,
                "incident.event_id": event.id,
            },
        )  # fmt: skip

    def _sample_root(self) -> bool:
        """Whether a new root trace (an event without a parent, a timer firing) is recorded."""
        ratio = self.root_sample_ratio
        return ratio is None or self._random.random() < ratio

    def _fire(self, result: BatchResult, incident: Incident, partition: int, now: datetime) -> None:
        due_before = [t.due_at for t in incident.timers if t.due_at <= now]
        armed_by = self.armed_traces.get(incident.id)
        span = None
        if self.tracer is not None and self._sample_root():
            link = link_from_carrier(armed_by, {"incident.link": "armed by"})
            span = self.tracer.start_span(
                "incident SLA timers fire",
                links=[link] if link is not None else None,
                attributes={"incident.id": incident.id, "incident.state": incident.state,
                            "incident.timers_due": len(due_before)},
            )  # fmt: skip
        decision = self.domain.fire_due(incident, now)
        result.fired_lateness.extend((now - d).total_seconds() for d in due_before)
        self._record(result, decision, partition, now, _carrier(span) if span else None, armed_by)
        if span is not None:
            span.set_attribute("incident.outputs", len(decision.outputs))
            span.end()

    def _record(
        self,
        result: BatchResult,
        decision: Decision,
        partition: int,
        now: datetime,
        trace: dict[str, str] | None,
        armed_by: dict[str, str] | None,
    ) -> None:
        """Stage the decision's state, timer row (keeping the trace that armed it) and outputs."""
        inc = decision.incident
        fired = not decision.accepted and any(o.type != INCIDENT_REJECTED for o in decision.outputs)
        if inc is not None and (decision.accepted or fired):
            if fired:  # timers fired outside a logged event: log the moment, so replay is exact
                result.write.firings[(inc.id, now)] = partition
            result.write.incidents[inc.id] = (inc, partition)
            due = inc.next_due
            result.write.timers[inc.id] = TimerRow(inc.id, partition, due, armed_by) if due else None
            result.next_due[inc.id] = (partition, due)
        self._emit(result, decision.outputs, partition, trace)

    @staticmethod
    def _emit(
        result: BatchResult, outputs: list[OutputEvent], partition: int, trace: dict[str, str] | None
    ) -> None:
        for out in outputs:
            result.outputs.append(out)
            result.write.outbox.append(
                OutboxRow(partition, out.topic, out.key, out.id, out.to_json_bytes(), trace or None)
            )

    @staticmethod
    def _offset(write: BatchWrite, record: InputRecord) -> None:
        tp = (record.topic, record.partition)
        start = write.offsets[tp][0] if tp in write.offsets else record.offset
        write.offsets[tp] = (start, record.offset + 1)


def _origin(record: InputRecord) -> str:
    """Where an unreadable message came from, quoted in its dead letter."""
    return f"{record.topic}/{record.partition}/{record.offset}"


def _carrier(span: Span) -> dict[str, str] | None:
    """The span's context to propagate, unless it is an unsampled root (nothing to continue)."""
    context = span.get_span_context()
    if not context.trace_flags.sampled and not span.is_recording():
        return None
    return carrier_of(context) or None


def _trace_of(record: InputRecord) -> dict[str, str] | None:
    found = {name: value.decode() for name, value in record.headers or () if name in TRACE_HEADERS and value}
    return found or None


def _structured(record: InputRecord, event: Event) -> bytes:
    """The event as structured JSON for the log (binary-mode input is re-serialized)."""
    raw = record.value or b""
    if isinstance(event, FastEvent) or (
        raw[:1] == b"{" and not any(name == "ce_specversion" for name, _ in record.headers or ())
    ):
        return raw  # a FastEvent is only ever decoded from a structured message
    return orjson.dumps(event.model_dump(mode="json", by_alias=True, exclude_none=True))

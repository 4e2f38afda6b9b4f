"""One batch: input records and due timers in, one atomic BatchWrite out (through the shared domain)."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
from opentelemetry.trace import Span, SpanKind, Tracer

from incident_contracts import TOPIC_EVENTS, parse_event
from incident_contracts.bounds import check_event_time
from incident_contracts.constants import INCIDENT_REJECTED, REASON_UNPROCESSABLE, SLA_WARNING
from incident_contracts.envelope import OutputEvent
from incident_contracts.errors import DecodeError, InputError, SchemaError
from incident_contracts.fast import FastEvent, decode_fast
from incident_contracts.models import CloudEvent
from incident_engine.adapters.store import (
    BatchWrite,
    EventKey,
    EventStore,
    LoggedEvent,
    OutboxRow,
    RepeatConflict,
    TimerRow,
)
from incident_engine.adapters.telemetry import carrier_of, extract_context, link_from_carrier
from incident_engine.domain import Decision, Incident, SlaDomain, reject_input
from incident_engine.domain.model import TICK, WARNING
from incident_engine.domain.outputs import rejected

TRACE_HEADERS = ("traceparent", "tracestate")
# A validated input event: the pydantic model, or (the common shape, decoded ~5x cheaper) msgspec's.
Event = CloudEvent | FastEvent
_YIELD_EVERY = 32  # records decided between two turns of the event loop
# W3C trace context (https://www.w3.org/TR/trace-context/): anything else starts a new root trace.
_IDS = rb"-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}"
_TRACEPARENT = re.compile(  # version 00 exactly; a later version may append fields
    rb"00" + _IDS + rb"|(?!00|ff)[0-9a-f]{2}" + _IDS + rb"(?:-[\x21-\x7e]*)?"
)
_TRACEPARENT_00 = re.compile(rb"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")  # the common case, cheaper
_ZERO_TRACE, _ZERO_SPAN = b"0" * 32, b"0" * 16
_TRACESTATE = re.compile(rb"[\x09\x20-\x7e]{0,512}")


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
    fired_lateness: list[float] = field(default_factory=list)  # seconds, fire time - wake moment
    # id -> (partition, wake moment of its next timer: the due moment, + the grace for a breach)
    next_due: dict[str, tuple[int, datetime | None]] = field(default_factory=dict)
    event_times: dict[int, datetime] = field(default_factory=dict)  # partition -> latest event time read


class IncidentCache:
    """Incidents of the owned partitions kept between batches, bounded; cleared on any doubt.

    For the incidents reported while cached (so every event of theirs went through this cache), it
    also keeps the 64-bit hashes of their events' (source, id): `logged` says for sure when an
    event is not one of them, and a batch whose incidents all have them needs no lookup of its
    events in the log (an acknowledgement's repeat is told from it, issue 17). A match may be a
    hash collision: the log decides. An incident loaded from the log has none (they are not loaded).
    """

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self.items: dict[str, Incident] = {}
        self.keys: dict[str, bytearray] = {}  # incident -> hashes of its logged events, 8 bytes each
        self.cleared = 0  # how many times it was emptied (a read begun before then is stale)

    def get(self, incident_id: str) -> Incident | None:
        """The cached incident, if any."""
        return self.items.get(incident_id)

    def put(self, incident: Incident) -> None:
        """Keep an incident (see `trim` for the bound)."""
        self.items[incident.id] = incident

    def logged(self, incident_id: str, key: EventKey) -> bool | None:
        """Whether an event (source, id) may be in the log for this incident: False is certain,
        True is to be checked; None when the cache does not know its events."""
        seen = self.keys.get(incident_id)
        if seen is None:
            return None
        return _digest(key) in seen  # a match across two hashes' bytes is a false alarm: checked

    def note(self, incident_id: str, key: EventKey, created: bool) -> None:
        """An event of the incident (a new one when `created`) goes to the log."""
        seen = self.keys.get(incident_id)
        if seen is None:
            if not created:
                return  # loaded from the log: its earlier events are not known here
            seen = self.keys[incident_id] = bytearray()
        elif len(seen) >= _KEYS_KEPT * 8:
            del self.keys[incident_id]  # a chatty incident: its events are looked up from now on
            return
        seen += _digest(key)

    def trim(self, protect: Collection[str]) -> None:
        """Past the limit, drop the oldest incidents, as many as it is over by (after each batch: about
        what the batch added), except those whose changes are not committed. Dropping a quarter of the
        cache at once held the event loop, and every due timer, for tens of ms (issue 17)."""
        items = self.items
        excess = len(items) - self.limit
        if excess <= 0:
            return
        oldest = itertools.islice(items, excess + len(protect))
        keys = self.keys
        for key in [k for k in oldest if k not in protect][:excess]:
            del items[key]
            keys.pop(key, None)

    def forget(self, incident_ids: Sequence[str] | None = None) -> None:
        """Drop some incidents, or all."""
        if incident_ids is None:
            self.items.clear()
            self.keys.clear()
            self.cleared += 1
        else:
            for incident_id in incident_ids:
                self.items.pop(incident_id, None)
                self.keys.pop(incident_id, None)


_KEYS_KEPT = 512  # events whose hashes an incident keeps (each check scans them)


def _digest(key: EventKey) -> bytes:
    return hash(key).to_bytes(8, "little", signed=True)


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
        breach_grace: timedelta = timedelta(0),
        max_clock_skew: timedelta = timedelta(minutes=5),
        max_event_age: timedelta = timedelta(days=30),
        repeat_lookup_window: float = 600.0,
    ) -> None:
        self.domain = domain
        # Breaches and failover orders wait this long past their due moment for evidence in flight.
        self.breach_grace = breach_grace
        self.store = store
        self.group_id = group_id
        self.max_message_bytes = max_message_bytes
        self.max_clock_skew = max_clock_skew  # how far ahead of `now` an event's time may be
        self.max_event_age = max_event_age  # how far behind
        # After a batch refused for a repeat the cache could not see (an id logged under another
        # incident), every event is looked up for this many seconds: input that reuses ids costs one
        # reset per window, not one per message.
        self.repeat_lookup_window = repeat_lookup_window
        self._look_up_all_until = float("-inf")  # time.monotonic()
        self.cache = cache if cache is not None else IncidentCache()
        self.tracer = tracer  # None: no spans (telemetry disabled), trace headers still propagate
        # Decide root sampling before making a span: an unsampled span still costs several µs per
        # event, and with the default sampler most events are unsampled roots.
        self.root_sample_ratio = root_sample_ratio
        self._random = random.Random()
        self.armed_traces: dict[str, dict[str, str]] = {}  # incident -> trace that armed its timers
        # Decided but not yet committed (a batch commits while the next one is decided); events are
        # identified by (source, id), as CloudEvents defines them.
        self.uncommitted_ids: set[tuple[str, str]] = set()
        # Incident -> how many decided batches that change it are not committed yet. A count, not a
        # set: when the first of two such batches commits, the second still holds the incident (and
        # the object the first wrote is the one the second changed): it must stay cached.
        self.uncommitted_incidents: Counter[str] = Counter()
        # Ownership epoch of each owned input partition (set by the consume loop when it claims
        # them): stamped on every batch, whose transaction is refused once one of them is stale.
        self.epochs: dict[int, int] = {}
        # A prefetch under way (see `prefetch`): the incidents it reads, and those of them a batch
        # decided meanwhile (the prefetched state of those is stale).
        self._prefetching: set[str] | None = None
        self._spoiled: set[str] = set()

    async def prefetch(self, incident_ids: Sequence[str]) -> int:
        """Load into the cache those of these incidents it lacks (the ones whose timers come due
        soon): a due timer of a cached incident fires without waiting for a read of Postgres, even
        while a batch waits for one (`EngineLoop`). Returns how many were cached.

        A state read while a batch that changes the incident is decided or committing may be stale:
        those incidents are left out (the ones uncommitted when it starts, and those decided while it
        reads), and so is everything when the cache was emptied meanwhile (a failed batch, a
        rebalance, whose reset may leave the log behind what was read)."""
        cache = self.cache
        wanted = [i for i in incident_ids if cache.get(i) is None and i not in self.uncommitted_incidents]
        if not wanted or self._prefetching is not None:
            return 0
        cleared = cache.cleared
        self._prefetching, self._spoiled = set(wanted), set()
        try:
            loaded = await self.store.load_incidents(wanted)
        finally:
            spoiled, self._prefetching, self._spoiled = self._spoiled, None, set()
        if cache.cleared != cleared:
            return 0
        busy = self.uncommitted_incidents
        fresh = [
            inc for i, inc in loaded.items() if i not in spoiled and i not in busy and cache.get(i) is None
        ]
        for incident in fresh:
            cache.put(incident)
        return len(fresh)

    async def process(
        self,
        records: Sequence[InputRecord],
        due: Sequence[tuple[str, int]],
        now: datetime,
        watermarks: Mapping[int, datetime] | None = None,
    ) -> BatchResult:
        """Decide and commit one batch: `due` lists (incident id, partition) whose timer is due."""
        result = await self.decide(records, due, now, watermarks)
        await self.commit(result)
        return result

    async def decide(
        self,
        records: Sequence[InputRecord],
        due: Sequence[tuple[str, int]],
        now: datetime,
        watermarks: Mapping[int, datetime] | None = None,
        parsed: Sequence[Event | OutputEvent] | None = None,
        meanwhile: Callable[[asyncio.Future[Any], set[str]], Awaitable[None]] | None = None,
    ) -> BatchResult:
        """Run a batch through the domain without writing it; its incidents go to the cache at once,
        so the next batch can be decided while this one commits (see `commit`, `abandon`).

        `now` is the wall clock (the outputs' `time`); the due timers fire under their partition's
        watermark (default `now`): what is due strictly before it, breaches and failover orders only
        once the grace has passed too (see `EngineLoop` for how watermarks advance). `parsed` is
        what `read` made of `records` at `now`, when the caller has it already. While the batch
        waits for its read of Postgres, `meanwhile(read, incidents)` runs (until the read is done)
        and may decide other batches, on other incidents than the ones this batch touches; it may
        also take timers out of `due` (a list) meanwhile: those it fires itself, not this batch."""
        result = BatchResult(BatchWrite(self.group_id))
        if parsed is None:
            parsed = self.read(records, now)
        events = [p for p in parsed if not isinstance(p, OutputEvent)]
        cache = self.cache
        wanted = {e.subject for e in events} | {incident_id for incident_id, _ in due}
        states = {i: inc for i in wanted if (inc := cache.get(i)) is not None}
        # An event of an incident whose events the cache knows, and not one of them, needs no lookup
        # (`unchecked`); unless the domain would refuse it: a refusal may be a repeat's, which is
        # dropped silently, so the log is asked then (see the loop). One that is in the log under
        # another incident fails the commit on the log's unique key, and the batch is redone.
        keys = [(e.source, e.id) for e in events]
        ids: list[EventKey] = []
        unchecked: set[EventKey] = set()
        if time.monotonic() < self._look_up_all_until:
            ids = keys
        else:
            for e, key in zip(events, keys, strict=True):
                if cache.logged(e.subject, key) is False:
                    unchecked.add(key)
                else:
                    ids.append(key)
        # The ids still uncommitted are taken before the lookup, not after: its snapshot may predate
        # a commit that lands (and leaves `uncommitted_ids`) before it answers; such an id would be
        # in neither, and its repeat applied twice.
        uncommitted = self.uncommitted_ids
        pending = [key for key in keys if key in uncommitted]
        missing = [i for i in wanted if i not in states]
        known: set[EventKey] = set()
        if ids or missing:
            lookup = asyncio.ensure_future(self.store.lookup(ids, missing))
            if meanwhile is not None and not lookup.done():
                try:
                    await meanwhile(lookup, wanted)
                except BaseException:
                    if lookup.done() and not lookup.cancelled():
                        lookup.exception()  # seen: the failure raised here is the one that counts
                    lookup.cancel()
                    self.abandon()
                    raise
            known, loaded = await lookup
            states.update(loaded)
        decided_from = {incident_id: inc.seq for incident_id, inc in states.items()}  # before any change
        known.update(pending)
        try:
            for n, (record, item) in enumerate(zip(records, parsed, strict=True), 1):
                if n % _YIELD_EVERY == 0:
                    # Let the previous batch's commit send its next statement (each of its round
                    # trips would otherwise wait for this loop): commit and decide overlap.
                    await asyncio.sleep(0)
                self._offset(result.write, record)
                if not isinstance(item, OutputEvent):
                    identity = (item.source, item.id)
                    if (
                        unchecked
                        and identity in unchecked
                        and identity not in known
                        and self.domain.refuses(states.get(item.subject), item.type)
                    ):
                        # Every unchecked id is asked now, in one round trip (refusals come in
                        # runs: a second channel acknowledging what the first did).
                        known.update(await self.store.known_event_ids(list(unchecked - known)))
                        unchecked.clear()
                    if identity in known:
                        result.outcomes[(item.type, "ignored_repeat")] += 1
                        continue  # exactly-once effect: an event already applied is dropped silently
                    known.add(identity)
                    self._apply_event(result, states, record, item, now)
                    self._saw(result.event_times, record.partition, item.time)
                else:
                    result.outcomes[("(unreadable)", "rejected")] += 1
                    self._emit(result, [item], record.partition, _trace_of(record))
            for incident_id, partition in due:
                incident = states.get(incident_id)
                if incident is not None:
                    watermark = now if watermarks is None else watermarks.get(partition, now)
                    self._fire(result, incident, partition, now, watermark)
        except BaseException:
            self.abandon()
            raise
        write = result.write
        write.decided_from = {i: decided_from[i] for i in write.incidents if i in decided_from}
        self._stamp_epochs(write)
        prefetching = self._prefetching
        for incident_id, (incident, _) in write.incidents.items():
            cache.put(incident)
            self.uncommitted_incidents[incident_id] += 1
            if prefetching is not None and incident_id in prefetching:
                self._spoiled.add(incident_id)
        created = write.created
        for entry in write.events:
            key = (entry.source, entry.event_id)
            uncommitted.add(key)
            cache.note(entry.incident_id, key, entry.incident_id in created)
        return result

    async def commit(self, result: BatchResult, after: Awaitable[object] | None = None) -> None:
        """Write a decided batch (batches commit in the order they were decided: `after` is the
        commit of the one decided before it, if still running; see `EventStore.commit`)."""
        try:
            await self.store.commit(result.write, after=after)
        except RepeatConflict:
            self._look_up_all_until = time.monotonic() + self.repeat_lookup_window
            self.abandon()
            raise
        except BaseException:
            self.abandon()
            raise
        self.uncommitted_ids.difference_update((e.source, e.event_id) for e in result.write.events)
        self.uncommitted_incidents.subtract(result.write.incidents.keys())
        for incident_id in result.write.incidents:
            if self.uncommitted_incidents[incident_id] <= 0:
                del self.uncommitted_incidents[incident_id]
        done = [i for i, (inc, _) in result.write.incidents.items() if inc.state == "restored"]
        self.cache.forget([i for i in done if i not in self.uncommitted_incidents])
        for incident_id in done:  # a restored incident arms no timer again: its trace goes with it
            self.armed_traces.pop(incident_id, None)
        self.cache.trim(protect=self.uncommitted_incidents.keys())

    def unprocessable(self, record: InputRecord, detail: str, now: datetime) -> BatchResult:
        """A batch that only dead-letters `record` (reason `unprocessable`) and moves its partition past it:
        for a message that fails its batch, alone, for a reason that is not the infrastructure's."""
        result = BatchResult(BatchWrite(self.group_id))
        key = record.key.decode(errors="replace") if record.key is not None else None
        out = rejected(REASON_UNPROCESSABLE, detail, record.value or b"", now, subject=key or None,
                       origin=_origin(record))  # fmt: skip
        self._offset(result.write, record)
        result.outcomes[("(unprocessable)", "rejected")] += 1
        try:
            trace = _trace_of(record)
        except ValueError:  # a header that is not text may be what made the message fail
            trace = None
        self._emit(result, [out], record.partition, trace)
        self._stamp_epochs(result.write)  # fenced like any batch, or the partition's owner never lands it
        return result

    def _stamp_epochs(self, write: BatchWrite) -> None:
        """The ownership epochs of the partitions a batch writes for, checked in its transaction."""
        epochs = self.epochs
        write.epochs = {p: epochs[p] for p in write.partitions() if p in epochs}

    def abandon(self) -> None:
        """After a failed batch: forget everything not known to be committed (states changed in place,
        the traces that armed timers: the loop reloads them with the timer rows)."""
        self.cache.forget()
        self.armed_traces.clear()
        self.uncommitted_ids.clear()
        self.uncommitted_incidents.clear()

    def read(self, records: Sequence[InputRecord], now: datetime) -> list[Event | OutputEvent]:
        """Each record as a validated event, or as the dead letter that explains why it is not one."""
        return [self._parse(record, now) for record in records]

    @staticmethod
    def times_read(
        records: Sequence[InputRecord], parsed: Sequence[Event | OutputEvent]
    ) -> dict[int, datetime]:
        """Partition -> the latest event time among the valid events read (what `read` returned):
        with them read, nothing stamped earlier is still to come from the partition (in order, up to
        the loop's allowance), so its watermark may pass them before they are decided."""
        times: dict[int, datetime] = {}
        for record, item in zip(records, parsed, strict=True):
            if not isinstance(item, OutputEvent):
                BatchProcessor._saw(times, record.partition, item.time)
        return times

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
        headers = record.headers or ()
        binary_mode = False
        for name, _ in headers:
            if not name.isascii():
                if not _is_utf8(name):
                    # The Kafka client read a header name that is not UTF-8 (adapters/kafka_records.py).
                    error = DecodeError(f"header name {name.encode(errors='surrogateescape')!r} is not UTF-8")
                    return reject_input(error, raw, now, key=record.key, origin=_origin(record))
            elif len(name) == 14 and name.lower() == "ce_specversion":
                binary_mode = True
        event: Event | None = None
        if raw[:1] == b"{" and not binary_mode:
            event = decode_fast(raw)  # None: not the common shape, pydantic decides and explains
        try:
            if event is None:
                event = parse_event(raw, headers)
        except InputError as exc:
            return reject_input(exc, raw, now, key=record.key, origin=_origin(record))
        stamp = getattr(record, "timestamp", None)  # ms; the broker's on the engine's input topic
        sent = datetime.fromtimestamp(stamp / 1000, UTC) if isinstance(stamp, int) and stamp > 0 else None
        late_or_early = check_event_time(event.time, now, self.max_clock_skew, self.max_event_age, sent)
        if late_or_early is not None:
            # Decided before anything reaches Postgres or the calendar maths, on both decoders' events.
            error = SchemaError(late_or_early, event_id=event.id, subject=event.subject)
            return reject_input(error, raw, now, key=record.key, origin=_origin(record))
        key = record.key.decode(errors="replace") if record.key is not None else None
        if key != event.subject:
            # The key decides the partition, and one incident must live in one partition.
            error = SchemaError(
                f"Kafka key {key!r} differs from subject {event.subject!r}: the key must be the incident id",
                event_id=event.id,
                subject=event.subject,
            )
            return reject_input(error, raw, now, key=record.key, origin=f"{event.source} {event.id}")
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
        parent = _trace_of(record)
        span = self._span_for(record, event, parent) if self.tracer is not None else None
        trace = _carrier(span) if span is not None else parent
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

    def _span_for(self, record: InputRecord, event: Event, parent: dict[str, str] | None) -> Span | None:
        assert self.tracer is not None
        if parent is None and not self._sample_root():
            return None  # an unsampled root: no span built at all
        return self.tracer.start_span(
            f"{TOPIC_EVENTS} process",
            context=extract_context([(k, v.encode()) for k, v in parent.items()]) if parent else None,
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

    @staticmethod
    def _saw(times: dict[int, datetime], partition: int, moment: datetime) -> None:
        """Note an event time read from a partition (its watermark advances with them while behind)."""
        if moment.tzinfo is not UTC:
            moment = moment.astimezone(UTC)
        seen = times.get(partition)
        if seen is None or moment > seen:
            times[partition] = moment

    def wake_of(self, incident: Incident) -> datetime | None:
        """When the incident's next timer may fire: its due moment, plus the grace for a breach or
        a failover order (evidence stamped in time may still be in flight)."""
        grace = self.breach_grace
        wake: datetime | None = None
        for timer in incident.timers:  # sorted by due moment: stop at the first due after `wake`
            due = timer[0]
            if wake is not None and due >= wake:
                break
            moment = due if timer[2] == WARNING else due + grace
            if wake is None or moment < wake:
                wake = moment
        return wake

    def _fire(
        self, result: BatchResult, incident: Incident, partition: int, now: datetime, watermark: datetime
    ) -> None:
        until = watermark - TICK  # strictly before the watermark: an event stamped then may still come
        breach_until = until - self.breach_grace
        armed_by = self.armed_traces.get(incident.id)
        span = None
        if self.tracer is not None and self._sample_root():
            link = link_from_carrier(armed_by, {"incident.link": "armed by"})
            span = self.tracer.start_span(
                "incident SLA timers fire",
                links=[link] if link is not None else None,
                attributes={"incident.id": incident.id, "incident.state": incident.state},
            )  # fmt: skip
        decision = self.domain.fire_due(incident, now, until=until, breach_until=breach_until)
        grace = self.breach_grace
        for out in decision.outputs:  # lateness: against the moment each one was allowed to fire
            wake = out.data["due_at"] if out.type == SLA_WARNING else out.data["due_at"] + grace
            result.fired_lateness.append((now - wake).total_seconds())
        if decision.outputs:
            result.write.firings[(incident.id, now)] = (partition, until, breach_until)
        else:  # popped before its grace had passed (timers loaded from rows do not know their kind)
            result.next_due[incident.id] = (partition, self.wake_of(incident))
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
            # (timers fired outside a logged event are in `write.firings`, with their horizons,
            # so that replay is exact: see `_fire`)
            result.write.incidents[inc.id] = (inc, partition)
            due = inc.next_due
            result.write.timers[inc.id] = TimerRow(inc.id, partition, due, armed_by) if due else None
            result.next_due[inc.id] = (partition, self.wake_of(inc))
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
    """The record's W3C trace context, when its `traceparent` is valid (else None: a new root trace).

    Never fails: the headers are input like the body (not UTF-8, NUL bytes, garbage); what is kept is
    ASCII that Postgres (jsonb) and the propagator take. The first of repeated headers wins.
    """
    parent = state = None
    for name, value in record.headers or ():
        if value is None or name not in TRACE_HEADERS:
            continue
        if name == "traceparent":
            if parent is None:
                parent = value
        elif state is None:
            state = value
    if parent is None:
        return None
    if len(parent) == 55 and _TRACEPARENT_00.fullmatch(parent) is not None:
        if parent[3:35] == _ZERO_TRACE or parent[36:52] == _ZERO_SPAN:
            return None
    elif _TRACEPARENT.fullmatch(parent) is None:
        return None
    found = {"traceparent": parent.decode("ascii")}
    if state and _TRACESTATE.fullmatch(state) is not None:
        found["tracestate"] = state.decode("ascii")
    return found


def _is_utf8(name: str) -> bool:
    """Whether a header name came from UTF-8 bytes (a name that was not holds lone surrogates)."""
    try:
        name.encode()
    except UnicodeEncodeError:
        return False
    return True


def _structured(record: InputRecord, event: Event) -> bytes:
    """The event as structured JSON for the log (binary-mode input is re-serialized)."""
    raw = record.value or b""
    if isinstance(event, FastEvent) or (
        raw[:1] == b"{" and not any(name.lower() == "ce_specversion" for name, _ in record.headers or ())
    ):
        return raw  # a FastEvent is only ever decoded from a structured message
    return orjson.dumps(event.model_dump(mode="json", by_alias=True, exclude_none=True))

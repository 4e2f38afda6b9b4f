"""Repeats told without a lookup: the cache knows the events of the incidents reported through it.

An acknowledgement of an incident reported while cached is looked up nowhere (issue 17: the lookup
was a round trip and a Postgres join per batch). These tests hold the other side: every repeat is
still dropped silently, whatever the cache knows, and a batch decided without a lookup still equals
the same input decided by a processor that looks everything up.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from incident_contracts import parse_event
from incident_contracts.constants import INPUT_TYPES, STATES
from incident_engine.adapters.memory import MemoryStore
from incident_engine.adapters.store import EventKey, OffsetConflict, RepeatConflict, TimerRow
from incident_engine.domain import Incident, PolicyRegistry, SlaDomain
from incident_engine.entrypoints.commands import build_event
from incident_engine.entrypoints.consumer import EngineLoop
from incident_engine.entrypoints.processor import BatchProcessor, BatchResult, IncidentCache, _digest
from tests.unit.test_processor import Feed, Record
from tests.unit.test_watermarks import Clock, ScriptedConsumer

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def ev(kind: str, incident: str, at: datetime, event_id: str, **data: Any) -> dict[str, Any]:
    body = build_event(kind, incident, source="/channels/test", time=at, severity=data.pop("severity", None),
                       region=data.pop("region", None), summary=None, extra=data)  # fmt: skip
    return body | {"id": event_id}


class CountingStore(MemoryStore):
    """The in-memory store, recording what each lookup asked."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[tuple[list[EventKey], list[str]]] = []

    async def lookup(
        self, event_keys: list[EventKey], incident_ids: list[str]
    ) -> tuple[set[EventKey], dict[str, Incident]]:
        self.asked.append((list(event_keys), list(incident_ids)))
        return await MemoryStore.known_event_ids(self, event_keys), await self.load_incidents(incident_ids)

    async def known_event_ids(self, event_keys: list[EventKey]) -> set[EventKey]:
        self.asked.append((list(event_keys), []))
        return await super().known_event_ids(event_keys)


def new_processor(store: MemoryStore) -> BatchProcessor:
    return BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "g")


def summary(result: BatchResult) -> tuple[Any, ...]:
    """What a batch decided, without the ids that differ between two runs (output ids are stable)."""
    return (
        sorted(result.outcomes.items()),
        [(e.incident_id, e.seq, e.event_id) for e in result.write.events],
        [(o.type, o.id) for o in result.outputs],
    )


async def report_two_acknowledge_one(
    processor: BatchProcessor,
    feed: Feed,
    acknowledged: str,
    other: str,
    severity: str = "high",
    also: list[dict[str, Any]] = [],  # noqa: B006 - read only
) -> None:
    """Two incidents reported; the first acknowledged by an event of id `shared`."""
    await processor.process(
        [feed(ev("reported", acknowledged, T0, "r1", severity=severity, region="au")),
         feed(ev("reported", other, T0, "r2", severity=severity, region="au")),
         feed(ev("acknowledged", acknowledged, T0 + M, "shared"))] + [feed(e) for e in also],
        [], T0 + 2 * M,
    )  # fmt: skip


async def test_acknowledgements_of_incidents_reported_here_need_no_lookup() -> None:
    store = CountingStore()
    processor = new_processor(store)
    feed = Feed()
    reports = [
        feed(ev("reported", f"A-{n}", T0, f"r{n}", severity="critical", region="uk")) for n in range(3)
    ]
    await processor.process(reports, [], T0 + M)
    assert len(store.asked) == 1 and sorted(store.asked[0][1]) == ["A-0", "A-1", "A-2"]  # reports: looked up
    store.asked.clear()
    acks = [feed(ev("acknowledged", f"A-{n}", T0 + M, f"a{n}")) for n in range(3)]
    result = await processor.process(acks, [], T0 + 2 * M)
    assert store.asked == []  # no round trip at all
    assert [e.event_id for e in result.write.events] == ["a0", "a1", "a2"]
    # The same input, decided by a processor with nothing cached (everything looked up): the same.
    fresh = new_processor(MemoryStore())
    feed_again = Feed()
    await fresh.process([feed_again(r) for r in [ev("reported", f"A-{n}", T0, f"r{n}", severity="critical",
                                                    region="uk") for n in range(3)]], [], T0 + M)  # fmt: skip
    fresh.cache.forget()
    again = await fresh.process(
        [feed_again(ev("acknowledged", f"A-{n}", T0 + M, f"a{n}")) for n in range(3)], [], T0 + 2 * M
    )
    assert summary(again) == summary(result)


async def test_a_repeat_of_an_accepted_event_is_dropped_by_what_the_cache_knows() -> None:
    store = CountingStore()
    processor = new_processor(store)
    feed = Feed()
    note = ev("updated", "U-1", T0 + M, "n1", note="on it")  # accepted in any open state: no refusal to see
    await processor.process([feed(ev("reported", "U-1", T0, "r1", severity="high", region="au")), feed(note)],
                            [], T0 + 2 * M)  # fmt: skip
    store.asked.clear()
    result = await processor.process([feed(note)], [], T0 + 3 * M)  # delivered again, a batch later
    assert result.outcomes[("incident.updated", "ignored_repeat")] == 1
    assert result.write.events == [] and result.outputs == []
    assert store.asked == [([("/channels/test", "n1")], [])]  # the cache's match, confirmed by the log


async def test_a_hash_collision_is_checked_not_taken_for_a_repeat() -> None:
    store = CountingStore()
    processor = new_processor(store)
    feed = Feed()
    await processor.process([feed(ev("reported", "C-1", T0, "r1", severity="high", region="au"))], [], T0 + M)
    processor.cache.keys["C-1"] += _digest(("/channels/test", "a1"))  # as if another event hashed alike
    store.asked.clear()
    result = await processor.process([feed(ev("acknowledged", "C-1", T0 + M, "a1"))], [], T0 + 2 * M)
    assert [e.event_id for e in result.write.events] == ["a1"]  # applied: the log does not have it
    assert store.asked == [([("/channels/test", "a1")], [])]


async def test_an_id_logged_under_another_incident_is_still_a_repeat_when_refused() -> None:
    """The cache knows only its incident's events: an id logged under another incident is new to it.
    Where the domain would refuse the event (acknowledging twice), the log is asked first: a repeat is
    dropped silently, as a lookup would have, not dead-lettered as a duplicate acknowledgement."""
    store = CountingStore()
    processor = new_processor(store)
    feed = Feed()
    await report_two_acknowledge_one(
        processor, feed, "X-1", "X-2", also=[ev("acknowledged", "X-2", T0 + M, "a2")]
    )
    store.asked.clear()
    result = await processor.process([feed(ev("acknowledged", "X-2", T0 + M, "shared"))], [], T0 + 3 * M)
    assert result.outcomes[("incident.acknowledged", "ignored_repeat")] == 1
    assert result.outputs == []  # no incident.rejected
    assert store.asked == [([("/channels/test", "shared")], [])]
    # A new id the domain refuses is refused as before (one question to the log, then the dead letter).
    store.asked.clear()
    refused = await processor.process([feed(ev("acknowledged", "X-2", T0 + M, "a2-again"))], [], T0 + 3 * M)
    assert refused.outcomes[("incident.acknowledged", "rejected")] == 1
    assert [o.type for o in refused.outputs] == ["incident.rejected"]
    assert store.asked == [([("/channels/test", "a2-again")], [])]


async def test_an_id_logged_under_another_incident_and_accepted_fails_the_batch_then_is_dropped() -> None:
    """Where the domain would accept it, the log's unique key refuses the batch (OffsetConflict: redone
    from the stored offsets, as after any conflict); redone with nothing cached, the lookup drops it."""
    store = CountingStore()
    processor = new_processor(store)
    feed = Feed()
    await report_two_acknowledge_one(processor, feed, "Y-1", "Y-2")
    repeat = feed(ev("acknowledged", "Y-2", T0 + M, "shared"))
    with pytest.raises(RepeatConflict, match="/channels/test shared is in the event log already"):
        await processor.process([repeat], [], T0 + 3 * M)
    assert store.incidents["Y-2"]["state"] == "reported"  # nothing of the batch written
    assert processor.cache.items == {}  # the failed batch's states are forgotten (abandon)
    redo = await processor.process([Record(repeat.offset, repeat.value, repeat.key)], [], T0 + 3 * M)
    assert redo.outcomes[("incident.acknowledged", "ignored_repeat")] == 1
    assert redo.outputs == [] and store.incidents["Y-2"]["state"] == "reported"


async def test_incidents_loaded_from_the_log_are_looked_up_as_before() -> None:
    store = CountingStore()
    processor = new_processor(store)
    feed = Feed()
    await processor.process([feed(ev("reported", "L-1", T0, "r1", severity="low", region="us"))], [], T0 + M)
    processor.cache.forget()  # a restart, a reset, a trim: the incident comes back from the log
    store.asked.clear()
    await processor.process([feed(ev("acknowledged", "L-1", T0 + M, "a1"))], [], T0 + 2 * M)
    assert store.asked == [([("/channels/test", "a1")], ["L-1"])]
    assert processor.cache.logged("L-1", ("/channels/test", "zz")) is None  # its earlier events: unknown
    store.asked.clear()
    await processor.process([feed(ev("updated", "L-1", T0 + M, "u1", note="x"))], [], T0 + 2 * M)
    assert store.asked == [([("/channels/test", "u1")], [])]  # still asked: cached, events unknown


def test_the_cache_forgets_what_it_knew_with_the_incident() -> None:
    cache = IncidentCache(limit=1)
    key = ("/s", "1")
    cache.note("I-1", key, created=False)
    assert cache.logged("I-1", key) is None  # not created here: nothing known
    cache.note("I-1", key, created=True)
    assert cache.logged("I-1", key) is True and cache.logged("I-1", ("/s", "2")) is False
    cache.forget(["I-1"])
    assert cache.logged("I-1", key) is None
    for incident_id in ("I-2", "I-3"):  # over the limit: the oldest goes, with what was known of it
        cache.items[incident_id] = Incident.__new__(Incident)
        cache.note(incident_id, key, created=True)
    cache.trim(protect=())
    assert list(cache.items) == ["I-3"] and list(cache.keys) == ["I-3"]
    for n in range(600):  # a chatty incident stops keeping hashes: its events are looked up
        cache.note("I-3", ("/s", str(n)), created=False)
    assert cache.logged("I-3", ("/s", "599")) is None


TRACE = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]


async def test_refusals_of_a_batch_are_asked_of_the_log_in_one_round_trip() -> None:
    """A second channel acknowledging what the first did (design §4's typical duplicate): each is
    refused by the lifecycle, so each could be a repeat; the batch asks the log once for all."""
    store = CountingStore()
    processor = new_processor(store)
    feed = Feed()
    n = 20
    first = [feed(ev("reported", f"D-{i}", T0, f"r{i}", severity="critical", region="uk")) for i in range(n)]
    first += [feed(ev("acknowledged", f"D-{i}", T0 + M, f"a{i}")) for i in range(n)]
    await processor.process(first, [], T0 + 2 * M)
    store.asked.clear()
    second = [
        feed(ev("acknowledged", f"D-{i}", T0 + M, f"b{i}") | {"source": "/channels/sms"}) for i in range(n)
    ]
    result = await processor.process(second, [], T0 + 2 * M)
    assert result.outcomes[("incident.acknowledged", "rejected")] == n
    assert len(store.asked) == 1 and len(store.asked[0][0]) == n


async def test_a_repeat_that_failed_its_batch_leaves_no_trace_behind() -> None:
    """The failed attempt applied the repeat, and its trace became the one that armed the incident's
    timers; abandoning the batch forgets those (the loop reloads them with the timer rows), so the
    next firing does not link to, nor store, the trace of a message that was dropped."""

    async def run(forget_before_repeat: bool) -> tuple[dict[str, str] | None, TimerRow | None]:
        store = MemoryStore()
        processor = new_processor(store)
        feed = Feed()
        await report_two_acknowledge_one(
            processor, feed, "Y-1", "X-1", severity="critical"
        )  # no trace header
        if forget_before_repeat:
            processor.cache.forget()  # the repeat is looked up, dropped at once
        repeat = feed(ev("acknowledged", "X-1", T0 + M, "shared"))
        repeat.headers = TRACE
        try:
            await processor.process([repeat], [], T0 + 2 * M)
        except RepeatConflict:  # decided without a lookup: the batch fails, the redo drops the repeat
            redo = await processor.process(
                [Record(repeat.offset, repeat.value, repeat.key, headers=TRACE)], [], T0 + 2 * M
            )
            assert redo.outcomes[("incident.acknowledged", "ignored_repeat")] == 1
        fired = await processor.process([], [("X-1", 0)], T0 + 8 * M)  # the ack clock's 50 % warning
        assert fired.outputs
        row = store.timers.get("X-1")
        return processor.armed_traces.get("X-1"), row.trace_context if row is not None else None

    assert await run(forget_before_repeat=True) == (None, None)
    assert await run(forget_before_repeat=False) == (None, None)


class TimerCountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.timer_loads = 0

    async def load_timers(self, partitions: list[int]) -> list[TimerRow]:
        self.timer_loads += 1
        return await super().load_timers(partitions)


async def test_ids_reused_across_incidents_cost_one_reset_per_window_not_one_per_message() -> None:
    """A producer that numbers its events per incident reuses ids across incidents. The first such
    repeat the cache could not see fails its batch (the loop resets: every timer row reloaded);
    for the window after it every event is looked up, so the next ones are dropped in their batch."""
    store = TimerCountingStore()
    processor = BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "g")
    loop = EngineLoop(processor, store, clock=Clock(T0 + 3 * M))
    consumer = ScriptedConsumer(per_fetch=1)
    loop.consumer = consumer  # type: ignore[assignment]
    loop.assigned = {0}
    await loop._take([0])
    events = [
        ev("reported", "X-1", T0, "r1", severity="high", region="au"),
        ev("reported", "Y-1", T0, "r2", severity="high", region="au"),
        ev("acknowledged", "Y-1", T0 + M, "shared"),
        ev("updated", "Y-1", T0 + M, "u1", note="lets the acknowledgement's batch commit first"),
        ev("updated", "Y-1", T0 + M, "u2", note="filler"),
        ev("acknowledged", "X-1", T0 + 2 * M, "shared"),  # a repeat, naming another incident
        ev("reported", "Z-1", T0, "r3", severity="high", region="au"),  # reported after the reset
        ev("updated", "Z-1", T0 + M, "u3", note="filler"),
        ev("updated", "Z-1", T0 + M, "u4", note="filler"),
        ev("acknowledged", "Z-1", T0 + 2 * M, "shared"),  # the same id again, within the window
    ]
    consumer.publish(0, *events)
    conflicts = 0
    for _ in range(40):  # what `EngineLoop.run` does, without its sleeps
        try:
            if loop._needs_reset:
                await loop._reset()
            await loop.step()
        except OffsetConflict:
            conflicts += 1
            loop._needs_reset = True
    await loop.drain()
    assert store.offsets[("g", "incidents.events", 0)] == len(events)
    assert store.incidents["X-1"]["state"] == store.incidents["Z-1"]["state"] == "reported"  # both dropped
    assert (conflicts, store.timer_loads) == (1, 2)  # the first take, and one reset


@pytest.mark.parametrize("state", STATES)
def test_refuses_says_what_apply_does_in_every_state(state: str) -> None:
    """`SlaDomain.refuses` decides which unchecked events are looked up: it must refuse exactly what
    `handle` refuses, or an id logged under another incident would be dead-lettered, not dropped."""
    domain = SlaDomain(PolicyRegistry.load())
    report = parse_event(orjson.dumps(ev("reported", "S-1", T0, "r", severity="high", region="uk")), [])
    for event_type in INPUT_TYPES:
        incident = domain.handle(None, report, T0).incident
        assert incident is not None
        incident.state = state
        kind = event_type.removeprefix("incident.")
        extra = {"reported": {"severity": "high", "region": "uk"}, "updated": {"note": "n"}}.get(kind, {})
        event = parse_event(orjson.dumps(ev(kind, "S-1", T0 + M, "e", **extra)), [])
        refused = domain.refuses(incident, event_type)
        assert refused == (not domain.handle(incident, event, T0 + M).accepted), (state, event_type)
    assert domain.refuses(None, "incident.acknowledged") and not domain.refuses(None, "incident.reported")

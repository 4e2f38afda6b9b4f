"""The engine loop decides on event time: per-partition watermarks, the grace, backlogs."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from incident_contracts import TOPIC_EVENTS
from incident_engine.adapters.memory import MemoryStore
from incident_engine.adapters.store import TimerRow
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.entrypoints.consumer import EngineLoop
from incident_engine.entrypoints.processor import BatchProcessor
from incident_engine.entrypoints.timers import TimerHeap
from tests.unit.test_processor import Record, ev

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
M = timedelta(minutes=1)
S = timedelta(seconds=1)


class ScriptedConsumer:
    """Stands in for AIOKafkaConsumer: each partition's records, handed out `per_fetch` at a time;
    the high-water mark is the end of what was published (as a fetch response reports it)."""

    def __init__(self, per_fetch: int = 1) -> None:
        self.log: dict[int, list[Record]] = {}
        self.read_to: dict[int, int] = {}
        self.per_fetch = per_fetch

    def publish(self, partition: int, *events: dict[str, Any]) -> None:
        log = self.log.setdefault(partition, [])
        for body in events:
            log.append(Record(len(log), orjson.dumps(body), body["subject"].encode(), partition))

    async def getmany(
        self, timeout_ms: int = 0, max_records: int = 500
    ) -> dict[TopicPartition, list[Record]]:
        await asyncio.sleep(0)  # a fetch suspends (the batch being committed gets its turn)
        out: dict[TopicPartition, list[Record]] = {}
        for partition, log in self.log.items():
            start = self.read_to.get(partition, 0)
            chunk = log[start : start + min(self.per_fetch, max_records)]
            if chunk:
                out[TopicPartition(TOPIC_EVENTS, partition)] = chunk
                self.read_to[partition] = start + len(chunk)
        return out

    def highwater(self, tp: TopicPartition) -> int | None:
        return len(self.log.get(tp.partition, ())) if tp.partition in self.log else None

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return None  # the watermark of a caught-up partition is then the wall clock

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.read_to[tp.partition] = offset

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.read_to[tp.partition] = 0

    async def position(self, tp: TopicPartition) -> int:
        return self.read_to.get(tp.partition, 0)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def engine(
    consumer: ScriptedConsumer, partitions: Sequence[int], clock: Clock, grace: timedelta = 5 * S
) -> tuple[EngineLoop, MemoryStore]:
    store = MemoryStore()
    processor = BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "g", breach_grace=grace)
    loop = EngineLoop(processor, store, clock=clock, allowance=timedelta(0))
    loop.consumer = consumer  # type: ignore[assignment]
    loop.assigned = set(partitions)
    await loop._take(sorted(partitions))
    return loop, store


async def run_steps(loop: EngineLoop, steps: int) -> list[Any]:
    outputs: list[Any] = []
    for _ in range(steps):
        result = await loop.step()
        if result is not None:
            outputs += result.outputs
    await loop.drain()
    return outputs


def kinds(outputs: list[Any]) -> list[tuple[str, str | None, float | None]]:
    return [
        (o.type.rsplit(".", 1)[-1], o.data.get("clock"), o.data.get("threshold"))
        for o in outputs
        if o.topic == "incidents.breaches"
    ]


async def test_a_backlog_fires_nothing_before_the_acknowledgement_behind_it() -> None:
    """The issue's first case: every clock met, the three events read two hours late, one at a time."""
    t = NOW - 2 * 60 * M
    consumer = ScriptedConsumer(per_fetch=1)
    consumer.publish(
        0,
        ev("reported", "B", t, severity="critical", region="au"),
        ev("acknowledged", "B", t + 5 * M),
        ev("restored", "B", t + 20 * M),
    )
    loop, _ = await engine(consumer, [0], Clock(NOW))
    outputs = await run_steps(loop, 6)
    assert kinds(outputs) == [("warning", "restore", 0.5)]  # what simulate says; no breach, no failover


async def test_while_behind_time_follows_the_events_read() -> None:
    """A report read from a backlog fires its overdue timers once a later event of the partition
    shows their moments have passed, not at once on the wall clock."""
    t = NOW - 2 * 60 * M
    consumer = ScriptedConsumer(per_fetch=1)
    consumer.publish(
        0,
        ev("reported", "X", t, severity="critical", region="au"),
        ev("reported", "Y", t + 16 * M, severity="critical", region="au"),  # X's ack is overdue by then
        ev("acknowledged", "X", t + 17 * M),
        ev("acknowledged", "Y", t + 17 * M),
    )
    loop, _ = await engine(consumer, [0], Clock(NOW))
    outputs = await run_steps(loop, 8)
    # X really breached (acknowledged at 17 min); Y did not, although the wall clock is 2 hours on
    acks = [o.subject for o in outputs if o.type == "incident.sla.breached" and o.data["clock"] == "ack"]
    assert acks == ["X"]
    assert not [o for o in outputs if o.type == "incident.sla.retracted"]


async def test_a_timer_fires_in_the_step_that_reads_the_event_past_its_moment() -> None:
    """While behind, the records a step reads move their partition's watermark in that step, not the
    next one: each step of a backlog used to hold every timer a step longer (issue 17)."""
    t = NOW - 2 * 60 * M
    consumer = ScriptedConsumer(per_fetch=1)
    consumer.publish(
        0,
        ev("reported", "X", t, severity="critical", region="au"),
        ev("reported", "Y", t + 16 * M, severity="critical", region="au"),  # X's ack breached at 15 min
        ev("acknowledged", "Y", t + 17 * M),
    )
    loop, _ = await engine(consumer, [0], Clock(NOW))
    first = await loop.step()
    assert first is not None and kinds(first.outputs) == []
    await loop.drain()  # X's timers are armed once its batch commits
    second = await loop.step()  # reads Y's report: X's overdue timers fire here, after it
    assert second is not None
    fired = [(o.subject, *kinds([o])[0]) for o in second.outputs if o.topic == "incidents.breaches"]
    assert ("X", "breached", "ack", None) in fired, fired
    # and nothing due at or past the latest event read (Y's report): not one moment early
    assert all(o.data["due_at"] < t + 16 * M for o in second.outputs if o.topic == "incidents.breaches")
    await loop.drain()


async def test_a_due_timer_waits_for_the_acknowledgement_read_with_the_event_past_it() -> None:
    """The other direction: when the step that moves the watermark past a due moment also reads the
    acknowledgement stamped before it, the acknowledgement is applied first: no breach."""
    t = NOW - 2 * 60 * M
    consumer = ScriptedConsumer(per_fetch=1)
    consumer.publish(0, ev("reported", "X", t, severity="critical", region="au"))
    loop, _ = await engine(consumer, [0], Clock(NOW))
    await run_steps(loop, 1)
    consumer.per_fetch = 2
    consumer.publish(
        0,
        ev("acknowledged", "X", t + 14 * M),  # in time
        ev("reported", "Y", t + 16 * M, severity="critical", region="au"),  # past X's ack deadline
    )
    outputs = await run_steps(loop, 2)
    assert ("breached", "ack", None) not in kinds([o for o in outputs if o.subject == "X"])
    assert kinds([o for o in outputs if o.subject == "X"])[:2] == [
        ("warning", "ack", 0.5),
        ("warning", "ack", 0.8),
    ]


async def test_caught_up_breaches_wait_for_the_grace_and_warnings_do_not() -> None:
    clock = Clock(NOW)
    consumer = ScriptedConsumer(per_fetch=10)
    consumer.publish(0, ev("reported", "G", NOW - 15 * M + 2 * S, severity="critical", region="uk"))
    loop, _ = await engine(consumer, [0], clock)
    outputs = await run_steps(loop, 2)
    assert kinds(outputs) == [("warning", "ack", 0.5), ("warning", "ack", 0.8)]
    clock.now = NOW + 4 * S  # the ack breach was due 2 s ago: within the 5 s grace
    assert kinds(await run_steps(loop, 2)) == [("warning", "restore", 0.5)]  # due then too: no wait
    clock.now = NOW + 8 * S  # past due + grace
    late = await run_steps(loop, 2)
    assert kinds(late) == [("breached", "ack", None)]
    assert late[0].data["due_at"] == NOW + 2 * S  # the true due moment
    assert late[0].time == NOW + 8 * S  # emitted now


async def test_an_acknowledgement_within_the_grace_sends_no_breach() -> None:
    clock = Clock(NOW)
    consumer = ScriptedConsumer(per_fetch=10)
    consumer.publish(0, ev("reported", "H", NOW - 15 * M - 1 * S, severity="critical", region="uk"))
    loop, _ = await engine(consumer, [0], clock)
    await run_steps(loop, 2)
    consumer.publish(0, ev("acknowledged", "H", NOW - 15 * M - 1 * S + 14 * M))  # in time, 3 s in flight
    clock.now = NOW + 2 * S
    outputs = await run_steps(loop, 3)
    clock.now = NOW + 60 * S
    outputs += await run_steps(loop, 2)
    assert [o.type for o in outputs if o.type.startswith("incident.sla.b")] == []


async def test_a_partition_behind_does_not_hold_back_one_caught_up() -> None:
    clock = Clock(NOW)
    consumer = ScriptedConsumer(per_fetch=1)
    old = NOW - 60 * M
    consumer.publish(0, *[ev("reported", f"P0-{i}", old, severity="critical", region="uk") for i in range(4)])
    consumer.publish(1, ev("reported", "P1", NOW - 20 * M, severity="critical", region="uk"))
    loop, _ = await engine(consumer, [0, 1], clock)
    outputs = await run_steps(loop, 2)
    assert 1 in loop.caught_up and 0 not in loop.caught_up
    breached = {o.subject for o in outputs if o.type == "incident.sla.breached"}
    assert breached == {"P1"}  # on the wall clock
    assert not any(o.subject.startswith("P0") and o.type == "incident.sla.breached" for o in outputs)


def test_timer_heap_pops_each_partition_under_its_own_watermark() -> None:
    heap = TimerHeap()
    heap.arm("a", 0, NOW)
    heap.arm("b", 1, NOW)
    heap.arm("c", 1, NOW + M)
    assert heap.pop_due({0: (NOW - S).timestamp(), 1: (NOW + S).timestamp()}) == [("b", 1)]
    assert heap.pop_due({0: NOW.timestamp()}) == []  # strictly before the watermark
    assert heap.next_wake([0, 1]) == NOW.timestamp()
    heap.arm("a", 0, NOW + 2 * M)  # re-armed: the old entry is stale
    assert heap.pop_due({0: (NOW + S).timestamp(), 1: (NOW + 3 * M).timestamp()}) == [("c", 1)]
    heap.drop_partitions([0])
    assert len(heap) == 0
    heap.arm("d", 2, NOW)
    heap.arm("e", 3, NOW)
    heap.drop_partitions([4])  # not held: nothing changes
    assert len(heap) == 2
    heap.drop_partitions([3])
    assert (len(heap), heap.next_wake([2, 3])) == (1, NOW.timestamp())
    heap.drop_partitions([2, 3, 5])  # everything held
    assert (len(heap), heap.next_wake([2, 3])) == (0, None)
    heap.arm("d", 2, NOW)  # re-armed after the drop
    assert heap.pop_due({2: (NOW + S).timestamp()}) == [("d", 2)]


def test_arming_a_timer_never_hands_the_armed_timers_to_the_cyclic_collector() -> None:
    """The heap's maps hold atoms only, so the collector never walks them: a map that became tracked
    after a freeze (one new tuple stored in it) was walked entry by entry by every collection, a
    pause of 40 ms per million armed timers that held every due timer (issue 17)."""
    heap = TimerHeap()
    heap.load((f"i{n}", n % 3, NOW + n * S) for n in range(1000))
    gc.collect()
    gc.freeze()
    try:
        heap.arm("new", 1, NOW + M)
        heap.arm("i7", 1, NOW + 2 * M)  # re-armed
        heap.pop_due({p: (NOW + 10 * S).timestamp() for p in range(3)})
        tracked = [m for m in vars(heap).values() if isinstance(m, dict) and gc.is_tracked(m)]
        assert tracked == [heap._heaps]  # the heaps' lists: one per partition, few
        assert gc.get_objects(0).count(heap._heaps[1]) == 0  # the lists stay where they were frozen
    finally:
        gc.unfreeze()
    assert len(heap) == 1000 + 1 - 9  # i0..i9 popped, but i7 (re-armed later)
    fired = heap.pop_due({1: (NOW + 3 * M).timestamp()}, limit=2000)
    assert {("new", 1), ("i7", 1)} <= set(fired)
    assert ("i178", 1) in fired and ("i181", 1) not in fired


async def test_an_event_stamped_ahead_of_the_clock_fires_nothing_before_its_due_moment() -> None:
    """An `incident.updated` stamped 4 minutes ahead (within the skew) is applied as of the engine's
    clock: the restore breach and failover order due 3 minutes from now are not sent now, and a
    restoration read a minute later cancels them."""
    clock = Clock(NOW)
    consumer = ScriptedConsumer(per_fetch=10)
    consumer.publish(
        0,
        ev("reported", "F", NOW - 27 * M, severity="critical", region="uk"),
        ev("updated", "F", NOW + 4 * M, note="the channel's clock is fast"),
    )
    loop, _ = await engine(consumer, [0], clock)
    early = await run_steps(loop, 3)
    assert [k for k in kinds(early) if k[0] != "warning"] == [("breached", "ack", None)]  # due at -12 min
    clock.now = NOW + M
    consumer.publish(0, ev("restored", "F", NOW + M))
    clock.now = NOW + 10 * M
    later = await run_steps(loop, 4)
    assert [k for k in kinds(later) if k[0] != "warning"] == []  # restored at +1 min: met


async def test_a_caught_up_partition_waits_for_its_next_fetch_response() -> None:
    """Caught up means: all the broker had when it answered the last fetch has been read. A timer due
    after that answer waits for the next one (an event sent a moment before it may be in it)."""
    clock = Clock(NOW)
    consumer = ScriptedConsumer(per_fetch=10)
    consumer.publish(0, ev("reported", "W", NOW - 7 * M - 31 * S, severity="critical", region="uk"))
    answered = int((NOW - 2 * S).timestamp() * 1000)
    consumer.last_poll_timestamp = lambda tp: answered  # type: ignore[method-assign]
    loop, _ = await engine(consumer, [0], clock)
    assert kinds(await run_steps(loop, 3)) == []  # the 50 % warning is due at NOW - 1 s
    answered = int((NOW + S).timestamp() * 1000)
    assert kinds(await run_steps(loop, 2)) == [("warning", "ack", 0.5)]


async def test_a_partition_whose_stored_offset_retention_deleted_still_catches_up() -> None:
    """Postgres says offset 2, retention moved the log's start to 5 (the consumer resets there and
    reads nothing): the partition is caught up by the consumer's own position, and its timers fire."""
    clock = Clock(NOW)
    consumer = ScriptedConsumer(per_fetch=10)
    consumer.log[0] = []
    consumer.highwater = lambda tp: 5  # type: ignore[method-assign]
    store_offsets = {("g", TOPIC_EVENTS, 0): 2}
    loop, store = await engine(consumer, [], clock)
    store.offsets.update(store_offsets)
    store.timers["OLD"] = TimerRow("OLD", 0, NOW - M)
    loop.assigned = {0}
    await loop._take([0])
    assert loop.positions[0] == 2

    async def reset_position(tp: TopicPartition) -> int:
        return 5  # where auto_offset_reset=earliest put it

    consumer.position = reset_position  # type: ignore[method-assign]
    await run_steps(loop, 1)
    assert 0 in loop.caught_up and loop.watermarks(NOW) == {0: NOW}

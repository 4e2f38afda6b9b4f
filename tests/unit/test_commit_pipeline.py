"""The loop decides ahead of Postgres by up to `commit_depth` batches: commits land in the order the
batches were decided, a failed one voids those chained to it, and a reset redoes them exactly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta

import pytest

from incident_engine.adapters.memory import MemoryStore
from incident_engine.adapters.store import BatchWrite, OffsetConflict
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.entrypoints.consumer import EngineLoop
from incident_engine.entrypoints.processor import BatchProcessor
from tests.unit.test_processor import ev
from tests.unit.test_watermarks import NOW, Clock, ScriptedConsumer

pytestmark = pytest.mark.unit
M = timedelta(minutes=1)


class GatedStore(MemoryStore):
    """A MemoryStore whose commits wait for `gate` (a slow database), and may fail once it opens."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.fail: list[int] = []  # 1-based numbers of the commits that fail
        self.started = 0
        self.applied: list[list[int]] = []  # each committed batch's next offsets, in commit order

    async def commit(self, batch: BatchWrite, after: Awaitable[object] | None = None) -> None:
        self.started += 1
        number = self.started

        async def previous_then_gate() -> None:
            if after is not None:
                await after
            await self.gate.wait()
            if number in self.fail:
                raise OffsetConflict(f"commit {number} refused (test)")

        await super().commit(batch, after=previous_then_gate())
        self.applied.append([end for _, end in batch.offsets.values()])


async def loop_on(store: GatedStore, consumer: ScriptedConsumer, depth: int = 2) -> EngineLoop:
    processor = BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "g")
    loop = EngineLoop(processor, store, clock=Clock(NOW + 40 * M), commit_depth=depth)
    loop.consumer = consumer  # type: ignore[assignment]
    loop.assigned = {0}
    await loop._take([0])
    return loop


EVENTS = [  # built once: their ids (and so the outputs' ids) are the same in every run
    ev("reported", "P-1", NOW, severity="critical", region="au"),
    ev("acknowledged", "P-1", NOW + 2 * M),
    ev("investigating", "P-1", NOW + 3 * M),
    ev("restored", "P-1", NOW + 9 * M),
]


def lifecycle(consumer: ScriptedConsumer) -> None:
    consumer.publish(0, *EVENTS)


async def sequential_outputs() -> tuple[list[str], dict[str, object]]:
    """The same input, one batch committed before the next is decided (depth 1, no gate)."""
    store = GatedStore()
    store.gate.set()
    consumer = ScriptedConsumer(per_fetch=1)
    lifecycle(consumer)
    loop = await loop_on(store, consumer, depth=1)
    outputs = []
    for _ in range(4):
        result = await loop.step()
        assert result is not None
        outputs += [o.id for o in result.outputs]
    await loop.drain()
    return outputs, store.incidents["P-1"]


async def test_batches_are_decided_ahead_and_commit_in_order() -> None:
    store = GatedStore()
    consumer = ScriptedConsumer(per_fetch=1)
    lifecycle(consumer)
    loop = await loop_on(store, consumer)
    outputs = []
    for _ in range(2):  # two batches decided while Postgres has committed neither
        result = await loop.step()
        assert result is not None
        outputs += [o.id for o in result.outputs]
    assert len(loop._inflight) == 2 and store.applied == []
    third = asyncio.create_task(loop.step())  # a third waits: at most two commits under way
    for _ in range(5):
        await asyncio.sleep(0)
    assert not third.done() and store.applied == []
    store.gate.set()
    result = await third
    assert result is not None
    outputs += [o.id for o in result.outputs]
    result = await loop.step()
    assert result is not None
    outputs += [o.id for o in result.outputs]
    await loop.drain()
    assert store.applied == [[1], [2], [3], [4]]  # in the order decided
    assert sorted(seq for _, seq in store.log) == [1, 2, 3, 4]
    expected_outputs, expected_state = await sequential_outputs()
    assert outputs == expected_outputs
    assert store.incidents["P-1"] == expected_state
    assert loop.batches == 4


async def test_a_failed_commit_voids_the_batch_chained_to_it_and_a_reset_redoes_both() -> None:
    store = GatedStore()
    store.fail = [1]
    consumer = ScriptedConsumer(per_fetch=1)
    lifecycle(consumer)
    loop = await loop_on(store, consumer)
    assert await loop.step() is not None
    assert await loop.step() is not None  # decided on top of the first, which will fail
    store.gate.set()
    with pytest.raises(OffsetConflict, match="commit 1 refused"):
        for _ in range(10):  # the failure surfaces at the next step, or when the loop must wait
            await loop.step()
    # Neither batch wrote anything: the second waited for the first and failed with it.
    assert store.applied == [] and store.log == {} and store.offsets == {}
    assert not loop._inflight
    chained = list(loop._discarded)
    await loop._reset()  # what `run` does next: rewind to what the store holds
    # the reset first waited for the batch chained to the failed one (its clean-up included)
    assert chained and all(task.done() for task in chained) and not loop._discarded
    outputs = []
    while (result := await loop.step()) is not None:
        outputs += [o.id for o in result.outputs]
    await loop.drain()
    assert sorted(seq for _, seq in store.log) == [1, 2, 3, 4]
    expected_outputs, expected_state = await sequential_outputs()
    assert outputs == expected_outputs
    assert store.incidents["P-1"] == expected_state


async def test_depth_one_waits_for_each_commit() -> None:
    store = GatedStore()
    consumer = ScriptedConsumer(per_fetch=1)
    lifecycle(consumer)
    loop = await loop_on(store, consumer, depth=1)
    assert await loop.step() is not None
    second = asyncio.create_task(loop.step())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not second.done() and store.applied == []  # decided, waiting for the first commit
    store.gate.set()
    assert await second is not None
    await loop.drain()
    assert store.applied == [[1], [2]]


class SnapshotLookupStore(MemoryStore):
    """A MemoryStore whose `lookup` reads at once (Postgres takes its snapshot when the statement
    starts) but answers only when `answer` is set: a commit can land, and be seen by the loop, in
    between."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()
        self.answer.set()

    async def lookup(self, event_keys, incident_ids):  # type: ignore[no-untyped-def]
        found = await super().lookup(event_keys, incident_ids)
        await self.answer.wait()
        return found


async def test_a_repeat_stays_known_when_its_batch_commits_while_the_next_one_looks_it_up() -> None:
    """The next batch's lookup read the log before the first batch committed; the first batch's
    commit (and its bookkeeping) finished before that answer came back. The repeat is neither in
    the log the lookup read nor among the ids still uncommitted once it answered: it must still be
    known, dropped silently, not applied a second time (a duplicate in the log, or a rejection
    output for an input that was only delivered twice)."""
    from tests.unit.test_processor import Feed

    store = SnapshotLookupStore()
    processor = BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "g")
    feed = Feed()
    report = ev("reported", "R-1", NOW, severity="critical", region="au")
    ack = ev("acknowledged", "R-1", NOW + M)
    first = await processor.decide([feed(report), feed(ack)], [], NOW + 2 * M)
    store.answer.clear()
    second = asyncio.create_task(processor.decide([feed(ack)], [], NOW + 2 * M))  # the ack, redelivered
    for _ in range(3):
        await asyncio.sleep(0)  # its lookup has read the store, and waits to answer
    assert not second.done()
    await processor.commit(first)
    store.answer.set()
    result = await second
    assert result.outcomes[("incident.acknowledged", "ignored_repeat")] == 1
    assert result.write.events == [] and result.outputs == []
    await processor.commit(result)
    assert sorted(seq for _, seq in store.log) == [1, 2]


async def test_a_due_timer_is_not_held_behind_a_slow_commit_when_there_is_nothing_else_to_do() -> None:
    """An idle step waits for the commit under way only until the next timer may be due: it used to
    wait for every commit, and a commit Postgres stalled (a checkpoint) held each due timer (issue 17)."""
    store = GatedStore()
    store.gate.set()
    consumer = ScriptedConsumer(per_fetch=10)
    consumer.publish(0, ev("reported", "X", NOW, severity="critical", region="au"))
    clock = Clock(NOW + 1 * M)
    processor = BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "g")
    loop = EngineLoop(processor, store, clock=clock)
    loop.consumer = consumer  # type: ignore[assignment]
    loop.assigned = {0}
    await loop._take([0])
    assert await loop.step() is not None
    await loop.drain()  # X's timers armed: its first warning is due at 7.5 minutes
    store.gate.clear()  # Postgres stalls from now on
    consumer.publish(0, ev("reported", "Y", NOW + 1 * M, severity="critical", region="au"))
    assert await loop.step() is not None  # Y's batch: its commit waits for the gate
    assert await asyncio.wait_for(loop.step(), 1.0) is None  # nothing to do: back at once
    clock.now = NOW + 8 * M
    fired = await asyncio.wait_for(loop.step(), 1.0)
    assert fired is not None and [(o.subject, o.type) for o in fired.outputs] == [
        ("X", "incident.sla.warning")
    ]
    assert store.applied == [[1]]  # decided while Y's commit is still under way
    store.gate.set()
    await loop.drain()
    assert store.applied == [[1], [2], []]  # and committed after it, in order (a firing moves no offset)


async def test_the_fetch_waits_briefly_while_a_commit_is_under_way() -> None:
    """A commit landing arms its batch's timers, some of which may be due already: while one is under
    way, a fetch waits 10 ms at most (not the batch timeout) before the loop looks at the timers."""

    class Recording(ScriptedConsumer):
        def __init__(self) -> None:
            super().__init__(per_fetch=10)
            self.waits: list[int] = []

        async def getmany(self, timeout_ms: int = 0, max_records: int = 500):  # type: ignore[no-untyped-def]
            self.waits.append(timeout_ms)
            return await super().getmany(timeout_ms, max_records)

    store = GatedStore()
    consumer = Recording()
    consumer.publish(0, ev("reported", "W", NOW, severity="low", region="au"))
    loop = await loop_on(store, consumer)
    assert await loop.step() is not None  # its commit waits for the gate
    assert await loop.step() is None
    store.gate.set()
    await loop.drain()
    assert await loop.step() is None  # nothing under way: the whole batch timeout
    assert consumer.waits[0] == loop.batch_timeout_ms and consumer.waits[1] <= 10
    assert consumer.waits[2] == loop.batch_timeout_ms

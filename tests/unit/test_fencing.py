"""Fencing on the in-memory store: every batch carries its partitions' epochs and the seqs it started from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from incident_contracts import TOPIC_EVENTS
from incident_engine.adapters.memory import MemoryStore
from incident_engine.adapters.store import OffsetConflict
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.entrypoints.commands import build_event
from incident_engine.entrypoints.consumer import EngineLoop
from incident_engine.entrypoints.processor import BatchProcessor
from tests.unit.test_processor import Record

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def _processor(store: MemoryStore) -> BatchProcessor:
    return BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "g")


def _report(incident: str, offset: int, partition: int) -> Record:
    event = build_event("reported", incident, source="/channels/test", time=T0, severity="critical",
                        region="uk", summary=None, extra={})  # fmt: skip
    return Record(offset, orjson.dumps(event), incident.encode(), partition=partition)


async def test_a_timer_batch_of_a_replica_whose_partition_was_claimed_since_is_refused() -> None:
    store = MemoryStore()
    zombie = _processor(store)
    zombie.epochs = await store.claim("g", TOPIC_EVENTS, [0])
    await zombie.process([_report("INC-1", 0, 0)], [], T0)
    assert (await store.load_incidents(["INC-1"]))["INC-1"].seq == 1
    await store.claim("g", TOPIC_EVENTS, [0])  # another replica was assigned partition 0
    due = T0 + timedelta(minutes=15)
    result = await zombie.decide([], [("INC-1", 0)], due)  # the ack timer fires: no records at all
    assert result.write.epochs == {0: 1} and result.write.decided_from == {"INC-1": 1}
    assert result.write.outbox, "the zombie decided a breach"
    with pytest.raises(OffsetConflict):
        await zombie.commit(result)
    assert await store.outbox_backlog() == 1  # only the report's state change
    assert await store.read_firings() == []


async def test_a_re_read_drops_the_partitions_another_replica_claimed() -> None:
    store = MemoryStore()
    loop = EngineLoop(_processor(store), store)
    loop.processor.epochs = await store.claim("g", TOPIC_EVENTS, [0, 1])
    loop.assigned = {0, 1}
    loop.timers.arm("INC-9", 1, T0)
    await store.claim("g", TOPIC_EVENTS, [1])
    assert await loop._claim([0, 1]) == [0]
    assert loop.assigned == {0} and loop.processor.epochs == {0: 1} and len(loop.timers) == 0
    loop.assigned.add(1)  # assigned again by Kafka (its epoch forgotten): claimed anew
    assert await loop._claim([1]) == [1]
    assert loop.processor.epochs == {0: 1, 1: 3}


class RacingStore(MemoryStore):
    """Runs a rebalance callback while a claim is in flight (as aiokafka may, at any await)."""

    def __init__(self) -> None:
        super().__init__()
        self.during_claim: list[object] = []

    async def claim(self, group_id: str, topic: str, partitions: list[int]) -> dict[int, int]:
        claimed = await super().claim(group_id, topic, partitions)
        while self.during_claim:
            await self.during_claim.pop()  # type: ignore[misc]
        return claimed


async def test_a_claim_overtaken_by_a_rebalance_keeps_the_newest_epoch_of_assigned_partitions() -> None:
    store = RacingStore()
    loop = EngineLoop(_processor(store), store)
    loop.assigned = {0, 1}

    async def rebalance() -> None:  # 1 revoked; 0 revoked, assigned again and claimed anew
        loop.assigned = {0}
        loop.processor.epochs.clear()
        loop.processor.epochs.update(await MemoryStore.claim(store, "g", TOPIC_EVENTS, [0]))

    store.during_claim.append(rebalance())
    assert await loop._claim([0, 1]) == [0]
    assert loop.processor.epochs == {0: 2}  # not the overtaken claim's epoch 1, nothing for 1

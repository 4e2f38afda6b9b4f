"""The consume loop: batches of input and due timers, one transaction each, offsets kept in Postgres."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from incident_contracts import TOPIC_EVENTS
from incident_engine.adapters.store import EventStore, OffsetConflict
from incident_engine.entrypoints.processor import BatchProcessor, BatchResult
from incident_engine.entrypoints.timers import TimerHeap

log = logging.getLogger(__name__)


class EngineLoop:
    """Owns the assigned partitions: seeks them to the stored offsets, holds their timers, runs batches."""

    def __init__(
        self,
        processor: BatchProcessor,
        store: EventStore,
        *,
        batch_max: int = 500,
        batch_timeout_ms: int = 50,
        on_batch: Callable[[BatchResult, float], None] | None = None,
        before_commit: Callable[[BatchResult], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.processor = processor
        self.store = store
        self.batch_max = batch_max
        self.batch_timeout_ms = batch_timeout_ms
        self.on_batch = on_batch
        self.before_commit = before_commit  # e.g. the relay adding the outbox rows it has sent
        self.clock = clock
        self.timers = TimerHeap()
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned: set[int] = set()
        self.ready = asyncio.Event()
        self._stopping = False
        self._needs_reset = False
        self._pending: set[int] = set()  # assigned before the loop had its consumer
        self._batch_lock = asyncio.Lock()
        self._inflight: asyncio.Task[BatchResult] | None = None
        self.batches = 0

    # -- rebalance listener (aiokafka calls these between getmany calls of this task) --------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Give up partitions: forget their timers and cached incidents."""
        gone = {tp.partition for tp in revoked if tp.topic == TOPIC_EVENTS}
        async with self._batch_lock:  # let the batch being decided and the one committing finish
            await self.drain()
        self.assigned -= gone
        self._pending -= gone
        for partition in gone:  # a later assignment claims them anew
            self.processor.epochs.pop(partition, None)
        self.timers.drop_partitions(gone)
        self.processor.cache.forget()
        if not self.assigned:
            self.ready.clear()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Take partitions: seek to the offsets stored in Postgres and load their timers."""
        new = sorted(tp.partition for tp in assigned if tp.topic == TOPIC_EVENTS)
        for partition in new:  # an assignment always claims anew (a new epoch)
            self.processor.epochs.pop(partition, None)
        self.assigned |= set(new)
        await self._take(new)
        if self.consumer is not None:  # else `run` takes them (and becomes ready) once it starts
            self.ready.set()

    async def _take(self, partitions: list[int]) -> None:
        # A rebalance callback can run at any await below (the first take of `run` races the group's
        # first rebalances): after each one, only partitions still assigned are worked on (seeking
        # one no longer assigned raises).
        if not partitions:
            return
        if self.consumer is None:
            self._pending |= set(partitions)
            return
        partitions = await self._claim(partitions)
        if not partitions:
            return
        offsets = await self.store.committed_offsets(self.processor.group_id, TOPIC_EVENTS, partitions)
        for partition in partitions:
            if partition not in self.assigned:
                continue
            tp = TopicPartition(TOPIC_EVENTS, partition)
            if partition in offsets:
                self.consumer.seek(tp, offsets[partition])
            else:
                await self.consumer.seek_to_beginning(tp)  # nothing consumed yet: lose nothing
        rows = await self.store.load_timers(partitions)
        partitions = [p for p in partitions if p in self.assigned]
        owned = set(partitions)
        rows = [r for r in rows if r.partition in owned]
        self.timers.drop_partitions(partitions)
        self.timers.load((r.incident_id, r.partition, r.due_at) for r in rows)
        self.processor.armed_traces.update((r.incident_id, r.trace_context) for r in rows if r.trace_context)
        armed = len(rows)
        del rows
        # The heap of a partition set is long-lived and acyclic (up to millions of tuples): move what
        # exists now out of the collector's generations, so full collections stop scanning it and
        # their pauses stop delaying timers.
        gc.collect()
        gc.freeze()
        log.info("took partitions %s: %d timers armed", partitions, armed)

    async def _claim(self, partitions: list[int]) -> list[int]:
        """Fence: claim newly assigned partitions (a new epoch, before their offsets and timers are
        read); for those claimed before (a re-read after a failed batch), keep only the ones whose
        epoch is still ours. A partition claimed by another replica since was lost without this one
        knowing (cut off from the group coordinator): it is dropped until Kafka assigns it again.

        Returns the partitions to take (claimed, still ours and still assigned)."""
        epochs = self.processor.epochs
        group = self.processor.group_id
        fresh = [p for p in partitions if p not in epochs]
        held = {p: epochs[p] for p in partitions if p in epochs}
        if fresh:
            claimed = await self.store.claim(group, TOPIC_EVENTS, fresh)
            for partition, epoch in claimed.items():
                # A rebalance during the claim may have revoked the partition, or claimed it again
                # (a higher epoch, also ours): keep the latest of ours, for assigned ones only.
                if partition in self.assigned and epoch > epochs.get(partition, 0):
                    epochs[partition] = epoch
        if held:
            current = await self.store.epochs(group, TOPIC_EVENTS, list(held))
            # (one re-claimed by this replica meanwhile has a new epoch of ours: not lost)
            lost = [p for p, mine in held.items() if current.get(p) != mine and epochs.get(p) == mine]
            if lost:
                log.warning("partitions %s were claimed by another replica: dropped until reassigned", lost)
                for partition in lost:
                    del epochs[partition]
                self.assigned -= set(lost)
                self.timers.drop_partitions(lost)
                if not self.assigned:
                    self.ready.clear()
        return [p for p in partitions if p in epochs and p in self.assigned]

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self, consumer: AIOKafkaConsumer) -> None:
        """Consume until stopped; transient Kafka/Postgres failures are retried without losing anything."""
        self.consumer = consumer
        if self._pending:
            await self._take(sorted(self._pending))
            self._pending.clear()
        if self.assigned:
            self.ready.set()
        backoff = 0.2
        while not self._stopping:
            try:
                if self._needs_reset:
                    await self._reset()
                if await self.step() is not None:
                    backoff = 0.2
            except asyncio.CancelledError:
                raise
            except OffsetConflict as exc:
                log.warning("batch fenced off (%s); re-reading the partitions' offsets", exc)
                self._needs_reset = True
            except Exception as exc:
                log.warning("batch failed, retrying from the stored offsets in %.1fs: %r", backoff, exc)
                self._needs_reset = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        await self.drain()

    async def _reset(self) -> None:
        """After a failed batch: rewind to what Postgres holds (nothing half-applied survives)."""
        await self.drain()
        self.processor.abandon()
        await self._take(sorted(self.assigned))
        self._needs_reset = False

    async def step(self) -> BatchResult | None:
        """One batch: wait for input or the next timer, decide both, and start committing them.

        The commit runs while the next batch is fetched and decided (Postgres and Python overlap);
        commits stay in order, and a failed one voids the batch decided on top of it.
        """
        assert self.consumer is not None
        wait_ms = self.batch_timeout_ms
        until_timer = self.timers.seconds_until_next(self.clock())
        if until_timer is not None:
            wait_ms = min(wait_ms, int(until_timer * 1000))
        if self._inflight is not None and self._inflight.done():
            await self._finish_inflight()
        fetched = await self.consumer.getmany(timeout_ms=max(wait_ms, 0), max_records=self.batch_max)
        records = [r for tp in sorted(fetched, key=lambda t: t.partition) for r in fetched[tp]]
        async with self._batch_lock:
            records = [r for r in records if r.partition in self.assigned]
            now = self.clock()
            due = self.timers.pop_due(now, limit=self.batch_max)
            if not records and not due:
                await self._finish_inflight()
                return None
            started = time.perf_counter()
            try:
                result = await self.processor.decide(records, due, now)
                await self._finish_inflight()
            except BaseException:
                for incident_id, partition in due:  # they stay due: re-armed from Postgres on reset
                    self.timers.arm(incident_id, partition, now)
                raise
            if self.before_commit is not None:
                self.before_commit(result)
            self._inflight = asyncio.create_task(self._commit(result, started))
            return result

    async def _commit(self, result: BatchResult, started: float) -> BatchResult:
        await self.processor.commit(result)
        for incident_id, (partition, next_due) in result.next_due.items():
            if partition in self.assigned:
                self.timers.arm(incident_id, partition, next_due)
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(result, time.perf_counter() - started)
        return result

    async def _finish_inflight(self) -> None:
        """Wait for the batch being committed; its failure is raised here (the caller resets)."""
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    async def drain(self) -> None:
        """Wait for the commit in flight, if any (on shutdown and rebalance); failures mean a reset."""
        try:
            await self._finish_inflight()
        except Exception as exc:
            log.warning("last batch did not commit (%r); it will be redone from the stored offsets", exc)
            self._needs_reset = True

    def stop(self) -> None:
        """Finish the current batch, then leave the loop."""
        self._stopping = True

    def status(self) -> dict[str, Any]:
        """What /readyz and logs say about the loop."""
        return {"partitions": sorted(self.assigned), "timers": len(self.timers), "batches": self.batches}

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
from incident_engine.entrypoints.isolation import Isolation, describe, is_infrastructure
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
        on_timer_dropped: Callable[[str], None] | None = None,
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
        self._take_failed = False  # an assignment whose offsets or timers did not load: not ready
        self.isolation = Isolation(self, on_timer_dropped)  # after a batch failed on its input

    # -- rebalance listener (aiokafka calls these between getmany calls of this task) --------------

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Give up partitions: forget their timers and cached incidents."""
        gone = {tp.partition for tp in revoked if tp.topic == TOPIC_EVENTS}
        async with self._batch_lock:  # let the batch being decided and the one committing finish
            await self.drain()
        self.assigned -= gone
        self._pending -= gone
        self.timers.drop_partitions(gone)
        self.processor.cache.forget()
        if not self.assigned:
            self.ready.clear()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Take partitions: seek to the offsets stored in Postgres and load their timers."""
        new = sorted(tp.partition for tp in assigned if tp.topic == TOPIC_EVENTS)
        self.assigned |= set(new)
        try:
            await self._take(new)
        except Exception as exc:
            # aiokafka only logs a listener's failure and goes on: the partitions would be consumed
            # from wherever Kafka says, without their timers. Hold them until the loop retakes them.
            log.warning("taking partitions %s failed (%r); not ready until they are retaken", new, exc)
            self._take_failed = True
            self._needs_reset = True
            self.ready.clear()
            if self.consumer is not None:
                self.consumer.pause(*(TopicPartition(TOPIC_EVENTS, p) for p in new))
            return
        if self.consumer is not None and not self._take_failed:  # else `run` takes them (and becomes ready)
            self.ready.set()

    async def _take(self, partitions: list[int]) -> None:
        if not partitions:
            return
        if self.consumer is None:
            self._pending |= set(partitions)
            return
        offsets = await self.store.committed_offsets(self.processor.group_id, TOPIC_EVENTS, partitions)
        for partition in partitions:
            tp = TopicPartition(TOPIC_EVENTS, partition)
            if partition in offsets:
                self.consumer.seek(tp, offsets[partition])
            else:
                await self.consumer.seek_to_beginning(tp)  # nothing consumed yet: lose nothing
        rows = await self.store.load_timers(partitions)
        if dropped := self.isolation.dropped_timers:
            rows = [r for r in rows if r.incident_id not in dropped]
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

    # -- the loop ------------------------------------------------------------------------------------

    async def run(self, consumer: AIOKafkaConsumer) -> None:
        """Consume until stopped; transient Kafka/Postgres failures are retried without losing anything."""
        self.consumer = consumer
        if self._pending:
            self._pending.clear()
            self._needs_reset = True  # `_reset` takes every assigned partition, retried until it works
        elif self.assigned and not self._take_failed:
            self.ready.set()
        backoff = 0.2
        while not self._stopping:
            isolating = self.isolation.active
            try:
                if self._needs_reset:
                    await self._reset()
                if self.isolation.active:
                    progressed = await self.isolation.step()
                else:
                    progressed = await self.step() is not None
                if progressed:
                    backoff = 0.2
            except asyncio.CancelledError:
                raise
            except OffsetConflict as exc:
                log.warning("batch fenced off (%s); re-reading the partitions' offsets", exc)
                self._needs_reset = True
            except Exception as exc:
                if not isolating and not self._needs_reset and not is_infrastructure(exc):
                    # The input is at fault, not Postgres or Kafka: retrying the same batch would
                    # fail forever. Redo it from the stored offsets one piece at a time instead.
                    log.warning("batch failed on its input (%s); isolating the culprit", describe(exc))
                    await self.isolation.suspect_fetched()
                    self._needs_reset = True
                    continue
                log.warning("batch failed, retrying from the stored offsets in %.1fs: %r", backoff, exc)
                self._needs_reset = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        await self.drain()

    async def _reset(self) -> None:
        """After a failed batch: rewind to what Postgres holds (nothing half-applied survives)."""
        await self.drain()
        self.processor.abandon()
        try:
            await self._take(sorted(self.assigned))
        except BaseException:
            self.ready.clear()  # the timers of some partitions may be missing: not ready
            raise
        self._needs_reset = False
        if self._take_failed and self.consumer is not None:
            self.consumer.resume(*(TopicPartition(TOPIC_EVENTS, p) for p in self.assigned))
        self._take_failed = False
        if self.assigned:
            self.ready.set()

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

"""The consume loop: batches of input and due timers, one transaction each, offsets kept in Postgres."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import IllegalStateError

from incident_contracts import TOPIC_EVENTS
from incident_engine.adapters.store import EventStore, OffsetConflict
from incident_engine.entrypoints.isolation import Isolation, describe, is_infrastructure
from incident_engine.entrypoints.processor import BatchProcessor, BatchResult, InputRecord
from incident_engine.entrypoints.timers import TimerHeap

log = logging.getLogger(__name__)
# The consumer's fetch long poll: how stale a caught-up partition's watermark can be when it is idle.
FETCH_WAIT_MS = 20
# Batches of due timers that may be decided beyond `commit_depth` while Postgres is slow. A look every
# `_TICK` makes one whenever a timer is due: with 4, a checkpoint's 100-170 ms stall used them up in
# its first 20 ms and every timer due in the rest of it waited for it (traced, issue 17).
_AHEAD = 16
# Batches of input that may be read ahead (not decided) while the loop waits for Postgres: with one,
# input arriving through a longer stall left its partitions behind again, and nothing of theirs fired.
_READ_AHEAD_BATCHES = 4
_PREFETCH_MAX = 2000  # incidents read per prefetch
_TICK = 0.005  # seconds between two looks at the due timers while a batch waits for Postgres
_COMMIT_LOOK_MS = 10  # the longest fetch wait while commits are under way (see `step`)


def _subjects(records: Iterable[InputRecord]) -> set[str]:
    """The incidents these records name, by Kafka key (a record whose key is not its subject is
    refused, and changes no incident)."""
    return {r.key.decode(errors="replace") for r in records if r.key is not None}


class EngineLoop:
    """Owns the assigned partitions: seeks them to the stored offsets, holds their timers, runs batches.

    SLA time is event time, per partition (its watermark): a timer fires only once no event stamped
    before its due moment can still come from its partition. While a partition is behind (its
    position below the high-water mark of the last fetch: a backlog after a restart, a consumer
    that lags), its watermark is the latest event time read from it, minus `allowance` for channels
    that deliver out of order, and never past the wall clock; once caught up, it is the moment of
    the last fetch response (all the broker had then has been read), never past the wall clock.
    Breaches and failover orders also wait out the processor's grace (evidence in flight).
    """

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
        allowance: timedelta = timedelta(0),
        on_timer_dropped: Callable[[str], None] | None = None,
        commit_depth: int = 2,
        prefetch_ahead: timedelta = timedelta(seconds=2),
        prefetch_every: float = 0.25,
    ) -> None:
        self.processor = processor
        self.store = store
        self.batch_max = batch_max
        self.batch_timeout_ms = batch_timeout_ms
        self.on_batch = on_batch
        self.before_commit = before_commit  # e.g. the relay adding the outbox rows it has sent
        self.clock = clock
        self.allowance = allowance
        self.timers = TimerHeap()
        self.event_time: dict[int, datetime] = {}  # partition -> latest event time read since assigned
        self.caught_up: set[int] = set()  # partitions whose position reached the last high-water mark
        self.positions: dict[int, int] = {}  # partition -> next offset to read
        self.fetched_at: dict[int, datetime] = {}  # partition -> when its last fetch response came
        self.consumer: AIOKafkaConsumer | None = None
        self.assigned: set[int] = set()
        self.ready = asyncio.Event()
        self._stopping = False
        self._needs_reset = False
        self._pending: set[int] = set()  # assigned before the loop had its consumer
        self._batch_lock = asyncio.Lock()
        # Commits under way, oldest first, each chained to the one before (see `step`); at most
        # `commit_depth` of them: the loop decides ahead of Postgres by that many batches.
        self.commit_depth = max(1, commit_depth)
        self._inflight: deque[asyncio.Task[BatchResult]] = deque()
        self._discarded: list[asyncio.Task[BatchResult]] = []  # chained to a failed commit: see `drain`
        # Records read while a batch waited for Postgres, not decided yet: the next step's batch
        # (see `_read_ahead`), and the incidents they name (no timer of theirs fires before them).
        self._ahead: list[InputRecord] = []
        self._ahead_subjects: set[str] = set()
        self._rebalancing = False  # a read ahead found a rebalance under way: none until the next step
        self.batches = 0
        self._take_failed = False  # an assignment whose offsets or timers did not load: not ready
        self.isolation = Isolation(self, on_timer_dropped)  # after a batch failed on its input
        # Every `prefetch_every` s, the incidents whose timers come due within `prefetch_ahead` are
        # cached (`prefetch`), so that they fire without a read of Postgres.
        self.prefetch_ahead = prefetch_ahead
        self.prefetch_every = prefetch_every

    # -- rebalance listener (aiokafka's coordinator task calls these; a getmany under way then waits
    # for the new assignment, so none may be awaited while `_batch_lock` is held: see `_read_ahead`)

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """Give up partitions: forget their timers and cached incidents."""
        gone = {tp.partition for tp in revoked if tp.topic == TOPIC_EVENTS}
        async with self._batch_lock:  # let the batch being decided and the one committing finish
            await self.drain()
        self.assigned -= gone
        self._pending -= gone
        self._drop_ahead(gone)  # their new owner reads them from the stored offsets
        self._forget_time(gone)
        for partition in gone:  # a later assignment claims them anew
            self.processor.epochs.pop(partition, None)
        self.timers.drop_partitions(gone)
        dropped = self.isolation.dropped_timers
        for incident_id in [i for i, p in dropped.items() if p in gone]:  # their new owner tries again
            del dropped[incident_id]
        self.processor.cache.forget()
        self.processor.armed_traces.clear()  # reloaded with the timers of the partitions taken next
        if not self.assigned:
            self.ready.clear()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """Take partitions: seek to the offsets stored in Postgres and load their timers."""
        new = sorted(tp.partition for tp in assigned if tp.topic == TOPIC_EVENTS)
        for partition in new:  # an assignment always claims anew (a new epoch)
            self.processor.epochs.pop(partition, None)
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
        self._drop_ahead(set(partitions))  # read again from the stored offsets (the seeks below)
        self._forget_time(partitions)  # a new owner knows nothing of their time until it reads them
        for partition in partitions:
            if partition not in self.assigned:
                continue
            tp = TopicPartition(TOPIC_EVENTS, partition)
            if partition in offsets:
                self.consumer.seek(tp, offsets[partition])
                self.positions[partition] = offsets[partition]
            else:
                await self.consumer.seek_to_beginning(tp)  # nothing consumed yet: lose nothing
                self.positions[partition] = await self.consumer.position(tp)
        rows = await self.store.load_timers(partitions)
        partitions = [p for p in partitions if p in self.assigned]
        owned = set(partitions)
        rows = [r for r in rows if r.partition in owned]
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
            self._pending.clear()
            self._needs_reset = True  # `_reset` takes every assigned partition, retried until it works
        elif self.assigned and not self._take_failed:
            self.ready.set()
        prefetcher = asyncio.create_task(self._prefetch_forever())
        try:
            await self._run()
        finally:
            prefetcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await prefetcher

    async def _run(self) -> None:
        backoff = 0.2
        conflicts = 0  # batches fenced off in a row
        while not self._stopping:
            isolating = self.isolation.active
            committed = self.batches
            try:
                if self._needs_reset:
                    await self._reset()
                if self.isolation.active:
                    await self.isolation.step()
                else:
                    await self.step()
                if self.batches > committed:  # a batch committed (a decided one may still fail)
                    backoff, conflicts = 0.2, 0
            except asyncio.CancelledError:
                raise
            except OffsetConflict as exc:
                # Once is a rebalance, or a repeat logged under another incident (re-read at once;
                # the redo looks every event up); again and again is not (stored offsets ahead of
                # a truncated log, a replica that keeps claiming): back off, and say so.
                conflicts += 1
                self._needs_reset = True
                if conflicts == 1:
                    log.warning("batch refused (%s); re-reading the partitions' offsets", exc)
                    continue
                log_at = log.error if conflicts % 50 == 0 else log.warning
                log_at("batch refused %d times in a row (%s); re-reading in %.1fs", conflicts, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception as exc:
                if not isolating and not self._needs_reset and not is_infrastructure(exc):
                    # The input is at fault, not Postgres or Kafka: retrying the same batch would
                    # fail forever. Redo it from the stored offsets one piece at a time instead.
                    log.warning("batch failed on its input (%s); isolating the culprit", describe(exc))
                    self._needs_reset = True
                    try:
                        await self.isolation.suspect_fetched()
                    except Exception as marking:  # e.g. a rebalance under way: retried as below
                        log.warning("could not mark the fetched input for isolation: %r", marking)
                    else:
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

        Commits run while the next batches are fetched and decided (Postgres and Python overlap), up
        to `commit_depth` of them: each is chained to the one before, so they land in the order they
        were decided, and a failed one voids every batch decided on top of it. The loop waits for a
        commit only when that many are under way: a due timer is never held behind a slow commit
        (the wait used to follow every batch, and set the tail of timer lateness, issue 17).
        """
        assert self.consumer is not None
        wait_ms = self.batch_timeout_ms
        next_wake = self.timers.next_wake(self.caught_up)  # behind partitions wake with their events
        if next_wake is not None:
            until_wake = int((next_wake - self.clock().timestamp()) * 1000) + 1
            # past the wall clock but not yet the watermark: the next fetch response (within the
            # long poll) moves it; look again soon rather than spin
            wait_ms = min(wait_ms, max(until_wake, 2))
        if self._inflight:  # a commit landing meanwhile arms its batch's timers: some may be due
            wait_ms = min(wait_ms, _COMMIT_LOOK_MS)
        self._reap()
        self._rebalancing = False
        # A batch or more read ahead: its oldest batch, taken under the lock (a revocation waiting
        # for it drops its partitions' records first); nothing is fetched (what is fetched follows
        # what is left of it in its partitions).
        partial = len(self._ahead) >= self.batch_max
        if partial:
            records = []
        elif self._ahead:  # read while the last batch waited: decided now, topped up with what is there
            room = self.batch_max - len(self._ahead)
            fetched = await self.consumer.getmany(timeout_ms=0, max_records=room)
            # Taken after the fetch, not before: a rebalance the fetch waited for has dropped what
            # was read ahead of the partitions it took (`_drop_ahead`).
            records = self._take_ahead() + [r for tp in fetched for r in fetched[tp]]
            records.sort(key=lambda r: r.partition)  # stable: each partition's in offset order
        else:
            fetched = await self.consumer.getmany(timeout_ms=max(wait_ms, 0), max_records=self.batch_max)
            records = [r for tp in sorted(fetched, key=lambda t: t.partition) for r in fetched[tp]]
        async with self._batch_lock:
            if partial:
                records = [r for r in self._take_ahead(self.batch_max) if r.partition in self.assigned]
                # noted when read: their partitions' positions are past what is left read ahead
                await self._note_caught_up({record.partition for record in records})
            else:
                records = [r for r in records if r.partition in self.assigned]
                await self.note_read(records)
            now = self.clock()
            # The records just read count for the watermarks at once, not a step later: a due timer
            # of their partitions fires in this batch, after them (issue 17: a backlog's steps each
            # held every timer one step longer).
            parsed = self.processor.read(records, now)
            self.note_times(self.processor.times_read(records, parsed))
            watermarks = self.watermarks(now)
            due = self._pop_due_not_ahead(watermarks)
            if not records and not due:
                await self._await_oldest_commit()
                return None
            started = time.perf_counter()
            try:
                # What the batch fires after its events, once its read of Postgres is done: while it
                # waits, the timers of cached incidents its records do not name are taken out of it
                # and fire meanwhile (they used to wait 60-70 ms for other incidents' read).
                lent = list(due)
                named = _subjects(records)

                async def meanwhile(waiting: asyncio.Future[Any], held: set[str]) -> None:
                    await self._fire_meanwhile(waiting, held, lent, named)

                result = await self.processor.decide(
                    records, lent, now, watermarks, parsed, meanwhile=meanwhile
                )
                # Room for it once fewer than `commit_depth` of the batches decided before it are
                # under way (those fired meanwhile, after it, do not count: they would starve it).
                # What it changed is not committed yet: timers firing meanwhile leave it alone.
                held = set(result.write.incidents) | {incident_id for incident_id, _ in due}
                before = len(self._inflight)
                while before >= self.commit_depth:
                    await self._fire_meanwhile(self._inflight[0], held)
                    await self._finish_oldest()
                    before -= 1
            except BaseException:
                for incident_id, partition in due:  # they stay due: re-armed from Postgres on reset
                    self.timers.arm(incident_id, partition, now)
                raise
            # (its event times were noted before its timers were popped: `times_read`, a superset)
            await self._chain(result, started)
            return result

    async def _chain(self, result: BatchResult, started: float) -> None:
        """Start committing a decided batch, after the ones under way."""
        if self.before_commit is not None:
            self.before_commit(result)
        previous = self._inflight[-1] if self._inflight else None
        self._inflight.append(asyncio.create_task(self._commit(result, started, previous)))
        # Let the commit start now: the store takes its rows from the (cached, shared) incidents
        # before its first await, and the next batch changes those incidents in place.
        await asyncio.sleep(0)

    async def _fire_meanwhile(
        self,
        waiting: asyncio.Future[Any],
        held: set[str],
        lent: list[tuple[str, int]] | None = None,
        named: set[str] | None = None,
    ) -> None:
        """Until `waiting` (a batch's read of Postgres, or the commit it waits for) is done, fire
        the timers that come due, of cached incidents other than `held` (the waiting batch's), each
        time in a batch of their own, chained ahead of the waiting one.

        A slow read or commit (a checkpoint, a busy host: 40-150 ms) used to hold every timer that
        came due meanwhile (issue 17). Timers of incidents not cached wait for the next step's read;
        `prefetch` caches the incidents whose timers come due soon. At most `_AHEAD` batches beyond
        `commit_depth` are decided ahead of Postgres this way (input is still read ahead beyond that).

        The input that arrives meanwhile is read (`_read_ahead`), not decided: it is the next steps'
        batches, up to `_READ_AHEAD_BATCHES` of them. Unread, it left its partitions behind, and a
        partition that is behind fires nothing (under I/O pressure every read took 60-70 ms while
        input kept coming: timers 70-120 ms late). Read, its partitions catch up, and only the
        incidents it names wait for it.

        `lent` is the waiting batch's own due timers (it fires what is left of them after its read):
        those of cached incidents that its records (`named`) do not name are taken out of it and
        fire here, in caught-up partitions."""
        cache = self.processor.cache
        first = True
        while not waiting.done():
            # Only caught-up partitions: the time of one that is behind moves with the events
            # decided (its due timers are the step's, up to `batch_max`). Lent timers are out of
            # the heap, so the wait until its next one does not see them: with one that may fire
            # here, the first look is at once, and the next ones a tick apart (found in review).
            if lent and any(i not in (named or ()) and cache.get(i) is not None for i, _ in lent):
                timeout = 0.0 if first else _TICK
            else:
                timeout = self._until_next_wake(_TICK)
            first = False
            await asyncio.wait([waiting], timeout=timeout)
            if waiting.done():
                continue
            await self._read_ahead()  # the input that came meanwhile: its partitions catch up
            if len(self._inflight) >= self.commit_depth + _AHEAD:
                continue
            now = self.clock()
            watermarks = {p: w for p, w in self.watermarks(now).items() if p in self.caught_up}
            due = self.timers.pop_due_at({p: w.timestamp() for p, w in watermarks.items()}, self.batch_max)
            ahead = self._ahead_subjects
            ready = [
                (i, p) for i, p, _ in due if i not in held and i not in ahead and cache.get(i) is not None
            ]
            if len(ready) < len(due):
                for incident_id, partition, wake in due:  # as they were: the next step reads them
                    if incident_id in held or incident_id in ahead or cache.get(incident_id) is None:
                        self.timers.arm_at(incident_id, partition, wake)
            if lent:
                taken = {incident_id for incident_id, _ in ready}
                kept = []
                for incident_id, partition in lent:
                    if (
                        partition in watermarks
                        and incident_id not in taken
                        and incident_id not in ahead
                        and (named is None or incident_id not in named)
                        and cache.get(incident_id) is not None
                    ):
                        ready.append((incident_id, partition))
                        taken.add(incident_id)
                    else:
                        kept.append((incident_id, partition))
                lent[:] = kept  # the batch fires only these, after its read
            if not ready:
                continue
            started = time.perf_counter()
            try:
                result = await self.processor.decide([], ready, now, watermarks)
            except BaseException:
                for incident_id, partition in ready:
                    self.timers.arm(incident_id, partition, now)
                raise
            await self._chain(result, started)

    async def _read_ahead(self) -> None:
        """Read (not decide) what the consumer holds, a batch at most, up to `_READ_AHEAD_BATCHES` read
        ahead in all: the next steps decide it first, a batch each, before they fetch again.

        Its positions and high-water marks count at once: with it read, its partitions are caught
        up, and their timers may fire, except those of the incidents it names (by Kafka key: a
        record whose key is not its subject is refused, and changes no incident)."""
        assert self.consumer is not None
        room = min(self.batch_max, self.batch_max * _READ_AHEAD_BATCHES - len(self._ahead))
        records: list[InputRecord] = []
        if room > 0 and not self._rebalancing and not self._reassigning():
            # During a rebalance, aiokafka's getmany waits for the new assignment, even with no
            # timeout; the revocation that has to come first waits for `_batch_lock`, which the
            # waiting step holds: a deadlock (found in review). Without one under way, getmany
            # with no timeout never suspends. Should that change, the fetch is still given one
            # tick only, and nothing more is read ahead until the step is over (cancelled, it
            # would leave aiokafka's count of fetches under way one too high: see `_reassigning`).
            try:
                fetched = await asyncio.wait_for(self.consumer.getmany(timeout_ms=0, max_records=room), _TICK)
            except TimeoutError:
                self._rebalancing = True
                fetched = {}
            records = [r for tp in sorted(fetched, key=lambda t: t.partition) for r in fetched[tp]
                       if r.partition in self.assigned]  # fmt: skip
        if records:
            self._ahead += records
            self._ahead_subjects |= _subjects(records)
            await self.note_read(records)
        else:
            await self._note_caught_up(set())  # the fetches since the step: watermarks move on

    def _reassigning(self) -> bool:
        """Whether the consumer has a rebalance under way (aiokafka's own state, not public API; a
        unit test checks that a real AIOKafkaConsumer still has it). A getmany cancelled while it
        waits for the assignment never counts itself out of the consumer's fetches under way, and
        aiokafka's max-poll-interval check, which lets a stuck replica leave the group, is off for
        good (found in review): so the read ahead looks first rather than cancel."""
        subscription = getattr(self.consumer, "_subscription", None)
        return bool(getattr(subscription, "reassignment_in_progress", False))

    def _take_ahead(self, limit: int | None = None) -> list[InputRecord]:
        """The records read ahead (the first `limit` read, if given), each partition's in offset order.

        The first ones read hold each partition's first ones: what is left follows them."""
        if limit is not None and len(self._ahead) > limit:
            records, self._ahead = self._ahead[:limit], self._ahead[limit:]
            self._ahead_subjects = _subjects(self._ahead)
        else:
            records, self._ahead, self._ahead_subjects = self._ahead, [], set()
        return sorted(records, key=lambda r: r.partition)  # stable

    def _drop_ahead(self, partitions: set[int]) -> None:
        """Forget what was read ahead of these partitions (they are read again from the stored offsets)."""
        if self._ahead:
            self._ahead = [r for r in self._ahead if r.partition not in partitions]
            self._ahead_subjects = _subjects(self._ahead)

    async def prefetch(self) -> int:
        """Cache the incidents whose timers come due within `prefetch_ahead` (see `_fire_meanwhile`)."""
        soon = self.clock().timestamp() + self.prefetch_ahead.total_seconds()
        processor = self.processor
        cache, busy = processor.cache, processor.uncommitted_incidents

        def known(incident_id: str) -> bool:
            return cache.get(incident_id) is not None or incident_id in busy

        # Caught-up partitions only: those are the ones whose timers fire meanwhile.
        upcoming = self.timers.upcoming(sorted(self.caught_up), soon, _PREFETCH_MAX, skip=known)
        return await processor.prefetch(upcoming) if upcoming else 0

    async def _prefetch_forever(self) -> None:
        while True:
            await asyncio.sleep(self.prefetch_every)
            try:
                await self.prefetch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # only a saving lost: the batch that fires them reads them
                log.debug("prefetching incidents whose timers come due failed: %r", exc)

    async def note_read(self, records: Sequence[InputRecord]) -> None:
        """Positions after the records fetched, and which partitions are caught up now."""
        for record in records:
            self.positions[record.partition] = record.offset + 1
        await self._note_caught_up({record.partition for record in records})

    def note_event_times(self, result: BatchResult) -> None:
        """Advance each partition's latest event time with those a decided batch read."""
        self.note_times(result.event_times)

    def note_times(self, times: dict[int, datetime]) -> None:
        """Advance each partition's latest event time with these (partition -> latest read)."""
        for partition, moment in times.items():
            seen = self.event_time.get(partition)
            if seen is None or moment > seen:
                self.event_time[partition] = moment

    def _pop_due_not_ahead(self, watermarks: dict[int, datetime]) -> list[tuple[str, int]]:
        """`pop_due`, except the incidents that records still read ahead name: their events come in
        a later batch, and so do they (put back as they were: a refused event re-arms nothing)."""
        ahead = self._ahead_subjects
        if not ahead:
            return self.pop_due(watermarks)
        due: list[tuple[str, int]] = []
        marks = {p: w.timestamp() for p, w in watermarks.items()}
        for incident_id, partition, wake in self.timers.pop_due_at(marks, self.batch_max):
            if incident_id in ahead:
                self.timers.arm_at(incident_id, partition, wake)
            else:
                due.append((incident_id, partition))
        return due

    def pop_due(self, watermarks: dict[int, datetime]) -> list[tuple[str, int]]:
        """The incidents whose next timer may fire under their partition's watermark."""
        return self.timers.pop_due({p: w.timestamp() for p, w in watermarks.items()}, self.batch_max)

    def watermarks(self, now: datetime) -> dict[int, datetime]:
        """Each owned partition's SLA time (see the class docstring); a partition that is behind and
        has not been read from since it was assigned has none yet (nothing of it fires)."""
        marks: dict[int, datetime] = {}
        for partition in self.assigned:
            if partition in self.caught_up:
                fetched = self.fetched_at.get(partition)
                marks[partition] = now if fetched is None or fetched > now else fetched
            else:
                seen = self.event_time.get(partition)
                if seen is not None:
                    marks[partition] = min(now, seen - self.allowance)
        return marks

    async def _note_caught_up(self, read: set[int]) -> None:
        """Which owned partitions are caught up: position at the high-water mark of the last fetch.

        The position is the one after the last record read; where nothing was read this time and
        that looks behind, the consumer's own position is asked (a stored offset below the log's
        start after retention, an empty log: the consumer moved past records that never came)."""
        consumer = self.consumer
        assert consumer is not None
        for partition in list(self.assigned):
            position = self.positions.get(partition)
            tp = TopicPartition(TOPIC_EVENTS, partition)
            try:
                highwater = consumer.highwater(tp)
                fetched_ms = consumer.last_poll_timestamp(tp)
            except (AssertionError, IllegalStateError):  # no longer assigned (a rebalance under way)
                highwater = fetched_ms = None
            if fetched_ms is not None:
                self.fetched_at[partition] = datetime.fromtimestamp(fetched_ms / 1000, UTC)
            if highwater is not None and partition not in read and (position or 0) < highwater:
                with contextlib.suppress(TimeoutError, IllegalStateError, AssertionError):
                    known: int = await asyncio.wait_for(consumer.position(tp), 0.05)  # at once when known
                    position = self.positions[partition] = known
            caught_up = highwater is not None and position is not None and position >= highwater
            if caught_up:
                self.caught_up.add(partition)
            else:
                self.caught_up.discard(partition)

    def _forget_time(self, partitions: Iterable[int]) -> None:
        for partition in partitions:
            self.event_time.pop(partition, None)
            self.positions.pop(partition, None)
            self.fetched_at.pop(partition, None)
            self.caught_up.discard(partition)

    async def _commit(
        self, result: BatchResult, started: float, previous: asyncio.Task[BatchResult] | None = None
    ) -> BatchResult:
        await self.processor.commit(result, after=previous)
        dropped = self.isolation.dropped_timers
        if dropped:  # an incident changed by a new event has new timers: they load again on a reset
            for event in result.write.events:
                dropped.pop(event.incident_id, None)
        for incident_id, (partition, next_due) in result.next_due.items():
            if partition in self.assigned:
                self.timers.arm(incident_id, partition, next_due)
        self.batches += 1
        if self.on_batch is not None:
            self.on_batch(result, time.perf_counter() - started)
        return result

    def _reap(self) -> None:
        """Take the commits that are done, oldest first; a failure is raised here (the caller resets)."""
        inflight = self._inflight
        while inflight and inflight[0].done():
            task = inflight.popleft()
            if task.cancelled() or task.exception() is not None:
                self._discard_inflight()
            task.result()

    async def _await_oldest_commit(self) -> None:
        """With nothing to decide: let the oldest commit under way land (it arms the timers of its
        batch), but only until the next timer may be due. Waiting for every commit here held each
        due timer behind a commit that Postgres stalled (a checkpoint's writes: 130-160 ms, issue 17).
        A failure is raised by the next step (`_reap`)."""
        if not self._inflight:
            return
        await asyncio.wait([self._inflight[0]], timeout=self._until_next_wake(0.002))

    def _until_next_wake(self, floor: float) -> float:
        """Seconds until the next timer of a caught-up partition may be due (at least `floor`, at
        most the batch timeout)."""
        timeout = self.batch_timeout_ms / 1000
        next_wake = self.timers.next_wake(self.caught_up)
        if next_wake is not None:
            timeout = min(timeout, max(next_wake - self.clock().timestamp(), floor))
        return timeout

    async def _finish_oldest(self) -> None:
        task = self._inflight.popleft()
        try:
            await task
        except BaseException:
            self._discard_inflight()
            raise

    def _discard_inflight(self) -> None:
        """After a commit failed: the ones chained to it fail too (they wait on it), unwritten. They
        end in the next turns of the loop; `drain` (the first step of a reset) waits for them, so
        that their clean-up (`BatchProcessor.abandon`) is over before anything is decided again."""
        for task in self._inflight:
            task.add_done_callback(_retrieved)
        self._discarded.extend(self._inflight)
        self._inflight.clear()

    async def _finish_inflight(self) -> None:
        """Wait for every commit under way; the first failure is raised here (the caller resets)."""
        while self._inflight:
            await self._finish_oldest()

    async def drain(self) -> None:
        """Wait for the commits in flight, if any (on shutdown and rebalance); failures mean a reset."""
        try:
            await self._finish_inflight()
        except Exception as exc:
            log.warning("last batch did not commit (%r); it will be redone from the stored offsets", exc)
            self._needs_reset = True
        if self._discarded:
            discarded, self._discarded = self._discarded, []
            await asyncio.gather(*discarded, return_exceptions=True)

    def stop(self) -> None:
        """Finish the current batch, then leave the loop."""
        self._stopping = True

    def status(self) -> dict[str, Any]:
        """What /readyz and logs say about the loop."""
        return {"partitions": sorted(self.assigned), "timers": len(self.timers), "batches": self.batches}


def _retrieved(task: asyncio.Task[BatchResult]) -> None:
    """Mark a discarded commit's outcome as seen (it failed with the one it was chained to)."""
    if not task.cancelled():
        task.exception()

"""Poison isolation: which failures are the infrastructure's, and finding the input a batch fails on.

A batch fails either because something it needs is unreachable (Postgres, Kafka, the network: retry
the same batch later, it will pass) or because of what it holds (a value Postgres refuses, an input
the domain cannot reason about: retrying it fails forever). The second kind is isolated: the batch
is redone in halves, each committed on its own, down to the single input that still fails, which
is dead-lettered (or, for a due timer, dropped) so the partition goes on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaError
from asyncpg.exceptions._base import DataError as ArgumentError

from incident_contracts import TOPIC_EVENTS
from incident_engine.adapters.store import OffsetConflict
from incident_engine.entrypoints.processor import InputRecord

if TYPE_CHECKING:
    from incident_engine.entrypoints.consumer import EngineLoop

log = logging.getLogger(__name__)

Item = TypeVar("Item")
_DETAIL_LIMIT = 1000  # characters of an exception quoted in a dead letter

# Postgres refusing the data itself: a value it cannot store (class 22: a NUL in text, a number or
# time out of range), a constraint (23) or a size limit (54). Any other Postgres error (connection,
# shutdown, cancelled statement, serialization, a bug in our SQL) says nothing about the message.
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    ArgumentError,  # asyncpg refusing to encode a value client-side (an InterfaceError subclass)
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)
_INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    OffsetConflict,  # fenced off: another replica owns the partition now
    OSError,  # ConnectionError and friends: sockets, DNS, TLS
    TimeoutError,  # asyncio.TimeoutError too (asyncpg command_timeout, wait_for)
    asyncpg.InterfaceError,  # connection closed or in a bad state, pool closing
    KafkaError,
    MemoryError,
)


def is_infrastructure(exc: BaseException) -> bool:
    """True when `exc` says Postgres or Kafka cannot be used now (retry), not that the input is bad."""
    if isinstance(exc, ArgumentError):
        return False
    if isinstance(exc, _INFRASTRUCTURE):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return not isinstance(exc, _DATA_ERRORS)
    return False  # raised by the domain or the store's encoding of a value: the input is at fault


def describe(exc: BaseException) -> str:
    """The exception's type and message, bounded, for a dead letter's `detail` and the logs."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"


async def bisect(
    items: Sequence[Item],
    attempt: Callable[[Sequence[Item]], Awaitable[object]],
    quarantine: Callable[[Item, BaseException], Awaitable[object]],
) -> int:
    """Run `attempt` on all items, else on each half in order, down to single items; a single item
    that still fails (not for the infrastructure) goes to `quarantine`. Returns how many did.

    `attempt` must be all-or-nothing (decide and commit in one transaction), so that a failed half
    leaves nothing behind and a succeeded half is never redone. Infrastructure failures propagate.
    """
    if not items:
        return 0
    try:
        await attempt(items)
        return 0
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if is_infrastructure(exc):
            raise
        if len(items) == 1:
            await quarantine(items[0], exc)
            return 1
    middle = len(items) // 2
    return await bisect(items[:middle], attempt, quarantine) + await bisect(
        items[middle:], attempt, quarantine
    )


@dataclass(frozen=True, slots=True)
class DueTimer:
    """A due timer among the records of a batch being isolated."""

    incident_id: str
    partition: int


class Isolation:
    """The loop's isolation mode. After a batch failed on its input, everything fetched up to then is
    redone from the stored offsets without pipelining, one fetched batch at a time, bisected on
    failure: a single message that still fails is dead-lettered as `unprocessable` (committed with
    its offset, so the partition moves on), a single due timer that cannot fire is dropped."""

    def __init__(self, loop: EngineLoop, on_timer_dropped: Callable[[str], None] | None = None) -> None:
        self.loop = loop
        self.suspects: dict[int, int] = {}  # partition -> offset up to which input is isolated
        self.timers_suspect = False  # the due timers of the next round are isolated too
        # Incident -> partition, for incidents whose timer firing fails: not re-armed from their rows
        # on a reset, until a new event changes the incident (or the partition moves)
        self.dropped_timers: dict[str, int] = {}
        self.on_timer_dropped = on_timer_dropped

    @property
    def active(self) -> bool:
        """Whether the loop runs isolated rounds instead of pipelined batches."""
        return bool(self.suspects or self.timers_suspect)

    async def suspect_fetched(self) -> None:
        """Everything fetched so far (up to each partition's position) is decided in isolation."""
        consumer = self.loop.consumer
        assert consumer is not None
        self.timers_suspect = True  # a due timer may be the culprit as well
        for partition in sorted(self.loop.assigned):
            end = await self._position(partition)
            if partition not in self.loop.assigned:
                continue  # revoked while we waited (a rebalance): its new owner starts afresh
            if end is None:
                try:
                    end = consumer.highwater(TopicPartition(TOPIC_EVENTS, partition))
                except (AssertionError, IllegalStateError):  # no longer assigned to the consumer
                    continue
            if end is not None:
                self.suspects[partition] = max(end, self.suspects.get(partition, 0))

    async def step(self) -> bool:
        """One isolated round: fetch, then decide and commit alone (bisecting on failure) the records
        and due timers. True when it had work."""
        loop = self.loop
        assert loop.consumer is not None
        fetched = await loop.consumer.getmany(timeout_ms=loop.batch_timeout_ms, max_records=loop.batch_max)
        async with loop._batch_lock:
            records = [r for tp in sorted(fetched, key=lambda t: t.partition) for r in fetched[tp]
                       if r.partition in loop.assigned]  # fmt: skip
            await loop.note_read(records)
            now = loop.clock()
            watermarks = loop.watermarks(now)
            due = [DueTimer(i, p) for i, p in loop.pop_due(watermarks)]
            started = time.perf_counter()
            items: list[InputRecord | DueTimer] = [*records, *due]
            culprits = await bisect(
                items,
                lambda part: self._decide_and_commit(part, now, watermarks, started),
                lambda item, exc: self._quarantine(item, exc, now, started),
            )
            self.timers_suspect = False
            for partition, end in sorted(self.suspects.items()):
                if partition not in loop.assigned or (await self._position(partition) or 0) >= end:
                    del self.suspects[partition]
            if culprits or not self.suspects:
                log.info("isolated %d unprocessable input(s)%s", culprits,
                         "" if self.suspects else "; back to pipelined batches")  # fmt: skip
            return bool(items)

    async def _position(self, partition: int) -> int | None:
        consumer = self.loop.consumer
        assert consumer is not None
        try:
            return await asyncio.wait_for(consumer.position(TopicPartition(TOPIC_EVENTS, partition)), 1.0)
        except (TimeoutError, KafkaError):
            return None

    async def _decide_and_commit(
        self,
        items: Sequence[InputRecord | DueTimer],
        now: datetime,
        watermarks: dict[int, datetime],
        started: float,
    ) -> None:
        loop = self.loop
        records = [i for i in items if not isinstance(i, DueTimer)]
        due = [(i.incident_id, i.partition) for i in items if isinstance(i, DueTimer)]
        result = await loop.processor.decide(records, due, now, watermarks)
        loop.note_event_times(result)
        if loop.before_commit is not None:
            loop.before_commit(result)
        await loop._commit(result, started)

    async def _quarantine(
        self, item: InputRecord | DueTimer, exc: BaseException, now: datetime, started: float
    ) -> None:
        """Set aside one input that fails alone: a message is dead-lettered, a timer dropped."""
        if isinstance(item, DueTimer):
            # Not a message: nothing to dead-letter. Its row stays, so a fixed engine fires it on restart.
            log.error("SLA timer of incident %s (partition %d) cannot fire (%s); dropped from the heap",
                      item.incident_id, item.partition, describe(exc),
                      extra={"incident_id": item.incident_id, "partition": item.partition})  # fmt: skip
            self.dropped_timers[item.incident_id] = item.partition
            if self.on_timer_dropped is not None:
                self.on_timer_dropped(item.incident_id)
            return
        key = item.key.decode(errors="replace") if item.key is not None else None
        where = {"partition": item.partition, "offset": item.offset, "incident_id": key}
        log.warning("unprocessable message dead-lettered: partition %d offset %d incident %r: %s",
                    item.partition, item.offset, key, describe(exc), extra=where)  # fmt: skip
        result = self.loop.processor.unprocessable(item, describe(exc), now)
        try:
            await self.loop._commit(result, started)
        except Exception as dead_letter_failed:
            if is_infrastructure(dead_letter_failed):
                raise
            # Even the dead letter cannot be stored: skip the message (offsets only), or it would
            # stop the partition after all.
            log.error("dead letter of partition %d offset %d not stored (%s); message skipped",
                      item.partition, item.offset, describe(dead_letter_failed), extra=where)  # fmt: skip
            result.write.outbox.clear()
            result.outputs.clear()
            await self.loop._commit(result, started)

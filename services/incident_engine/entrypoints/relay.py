"""The outbox relay: committed outputs of owned partitions to Kafka, in order, by an idempotent producer.

Postgres holds the truth (the outbox rows), but reading back what the engine has just written is
pure overhead: the engine hands each committed batch's rows to the relay (`offer`), which sends
them from memory and deletes the rows once Kafka acknowledged them. The relay *sweeps* the outbox
table (reads it in id order) on start, after any failure, when the owned partitions change, and at
least every `sweep_seconds`: that catches rows nobody offered (written before a crash or restart,
by a previous owner of a partition, or committed when an offer could not be made). A row is deleted
only after Kafka acknowledged it, so nothing is lost; output ids are deterministic, so the rare
double send (a sweep racing a commit) is recognisable downstream. The deletes ride on the engine's
next batch transaction (`take_sent`/`deleted`): a transaction (and WAL flush) of their own per
round cost Postgres more than the deletes; with no batch coming, the relay deletes them itself.

An output the broker refuses for good (larger than the topic's `max.message.bytes`) must not wedge
the relay: its native batch is re-sent one message at a time, and a message refused alone is
*parked* (table `outbox_parked`, with the broker's error; counted, logged) while the rest goes on.
A refusal leaves a gap in the idempotent producer's sequence of that partition (every later send
fails with OutOfOrderSequenceNumber), so the relay renews its producer after one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    RecordListTooLargeError,
)
from aiokafka.partitioner import DefaultPartitioner

from incident_contracts.constants import CLOUDEVENTS_CONTENT_TYPE
from incident_engine.adapters.store import EventStore, OutboxRow

log = logging.getLogger(__name__)
_CONTENT_TYPE = ("content-type", CLOUDEVENTS_CONTENT_TYPE.encode())
_DELETE_TIMEOUT = 5.0  # seconds a batch may hold sent ids before the relay deletes them itself
_PARTITION_CACHE = 100_000  # (topic, key) -> partition entries kept (murmur2 is pure Python in aiokafka)
# The broker's (or the client's) "this will never fit": retrying the same bytes cannot succeed.
_REFUSED = (MessageSizeTooLargeError, RecordListTooLargeError)


class OutboxRelay:
    """Publishes outbox rows and forgets them once Kafka acknowledged every one of a round.

    `batch` counts outbox rows (each holds the outputs of one input batch and partition).
    """

    def __init__(
        self,
        store: EventStore,
        producer: AIOKafkaProducer,
        owned: Callable[[], list[int]],
        *,
        batch: int = 50,
        idle_seconds: float = 0.2,
        sweep_seconds: float = 1.0,
        renew_producer: Callable[[], Awaitable[AIOKafkaProducer]] | None = None,
        on_parked: Callable[[OutboxRow, str], None] | None = None,
    ) -> None:
        self.store = store
        self.producer = producer
        self.renew_producer = renew_producer  # a started producer in place of the current one
        self.on_parked = on_parked
        self.owned = owned
        self.batch = batch
        self.idle_seconds = idle_seconds
        self.sweep_seconds = sweep_seconds
        self.sent_total = 0
        self.parked_total = 0
        self._wake = asyncio.Event()
        self._round = asyncio.Lock()  # rounds never overlap (the run loop and a shutdown drain)
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        self._partition_of: dict[tuple[str, bytes | None], int] = {}
        self._hot: dict[int, list[OutboxRow]] = {}  # offered rows by outbox id, in commit order
        self._swept_upto = 0  # highest outbox id a sweep has read: offers at or below it are stale
        self._next_sweep = 0.0  # loop time of the next sweep (0: at once)
        self._owned_before: list[int] = []
        self._sent: dict[int, float] = {}  # ids of rows Kafka acknowledged, not deleted -> when
        self._deleting: dict[int, float] = {}  # of those, handed to a batch transaction -> when
        self._gone: set[int] = set()  # deleted while a sweep's read may still have seen them
        self._stopping = False

    def offer(self, rows: list[OutboxRow]) -> None:
        """Rows just committed (their ids assigned by the store): they are sent from memory."""
        hot = self._hot
        for row in rows:
            if row.id > self._swept_upto:
                entry = hot.get(row.id)
                if entry is None:
                    hot[row.id] = [row]
                else:
                    entry.append(row)
        self._wake.set()

    def take_sent(self) -> list[int]:
        """Ids of sent rows, for the next batch transaction to delete (see `deleted`)."""
        if not self._sent:
            return []
        ids = list(self._sent)
        self._deleting.update(dict.fromkeys(ids, asyncio.get_running_loop().time()))
        self._sent.clear()
        return ids

    def acknowledged(self) -> list[int]:
        """Ids of the outbox rows Kafka has acknowledged that are not deleted yet (a batch transaction
        deletes them, or the relay itself once input is idle for `idle_seconds`)."""
        return [*self._sent, *self._deleting]

    def deleted(self, ids: list[int]) -> None:
        """The batch transaction that took these ids committed."""
        for row_id in ids:
            self._deleting.pop(row_id, None)
        self._gone.update(ids)

    def resync(self) -> None:
        """Forget what was offered and read the outbox table next (after any doubt)."""
        self._hot.clear()
        self._next_sweep = 0.0

    async def run(self) -> None:
        """Relay until stopped; errors are logged and retried (outputs stay in the outbox meanwhile)."""
        backoff = 0.1
        while not self._stopping:
            try:
                sent = await self.relay_once()
                backoff = 0.1
            except (KafkaError, OSError, ConnectionError) as exc:
                log.warning("outbox relay failed, retrying in %.1fs: %s", backoff, exc)
                if isinstance(exc, OutOfOrderSequenceNumber):  # the producer is wedged for good
                    await self._renew()
                self.resync()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception as exc:  # e.g. Postgres restarting: keep trying, never lose rows
                log.warning("outbox relay failed, retrying in %.1fs: %r", backoff, exc)
                self.resync()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if sent < self.batch and not self._hot:  # (sent rows left for a batch: deleted after this)
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_seconds)

    async def relay_once(self) -> int:
        """Send one round of pending outputs; return how many outbox rows it took."""
        async with self._round:
            partitions = self.owned()
            if partitions != self._owned_before:  # a rebalance: the outbox may hold rows of new ones
                self._owned_before = partitions
                self.resync()
            now = asyncio.get_running_loop().time()
            await self._delete_leftovers(now)
            if not partitions:
                return 0
            if now >= self._next_sweep or self._stopping:
                rows = await self._sweep(partitions, now)
            elif self._hot:
                rows = self._take_hot(set(partitions))
            else:
                return 0
            if not rows:
                return 0
            await self._send(rows)
            ids = sorted({row.id for row in rows})
            self._sent.update(dict.fromkeys(ids, asyncio.get_running_loop().time()))
            self.sent_total += len(rows)
            return len(ids)

    async def _delete_leftovers(self, now: float) -> None:
        """Delete sent rows no batch took in time (idle input), or that a failed batch took."""
        for row_id, handed in list(self._deleting.items()):
            if now - handed > _DELETE_TIMEOUT or self._stopping:
                self._sent[row_id] = self._deleting.pop(row_id)
        if self._sent and (self._stopping or now - next(iter(self._sent.values())) >= self.idle_seconds):
            ids = sorted(self._sent)
            await self.store.mark_sent(ids)
            for row_id in ids:
                self._sent.pop(row_id, None)
            self._gone.update(ids)

    async def _sweep(self, partitions: list[int], now: float) -> list[OutboxRow]:
        # Rows deleted before this read starts cannot be in it; rows deleted while it runs (a batch
        # committing) may be: those are remembered in _gone until the next sweep.
        self._gone.clear()
        rows = await self.store.pending_outbox(partitions, self.batch)
        if len(rows) == 0 or len({row.id for row in rows}) < self.batch:
            self._next_sweep = now + self.sweep_seconds  # caught up: back to sending from memory
        sent, deleting, gone = self._sent, self._deleting, self._gone
        rows = [r for r in rows if r.id not in sent and r.id not in deleting and r.id not in gone]
        if rows:
            self._swept_upto = max(self._swept_upto, max(row.id for row in rows))
            for row in rows:
                self._hot.pop(row.id, None)
        return rows

    def _take_hot(self, owned: set[int]) -> list[OutboxRow]:
        rows: list[OutboxRow] = []
        for row_id in list(itertools.islice(self._hot, self.batch)):
            # Rows of a partition given up stay in the table for its new owner.
            rows.extend(row for row in self._hot.pop(row_id) if row.partition in owned)
        return rows

    async def _send(self, rows: list[OutboxRow]) -> None:
        """Produce in native batches per (topic, partition): far cheaper than a future per message.

        A batch the broker refuses as too large is re-sent one message at a time (it may be refused
        for its total size alone); a message refused alone is parked, and the rest goes on.
        """
        batches: dict[tuple[str, int], list[tuple[Any, list[OutboxRow]]]] = {}
        partition_of = self._partition_of
        for row in rows:
            partition = partition_of.get((row.topic, row.key))
            if partition is None:
                partition = await self._partition(row.topic, row.key)
            pending = batches.get((row.topic, partition))
            if pending is None:
                pending = batches[(row.topic, partition)] = [(self.producer.create_batch(), [])]
            headers = kafka_headers(row)
            if pending[-1][0].append(key=row.key, value=row.payload, timestamp=None, headers=headers) is None:
                pending.append((self.producer.create_batch(), []))  # full: the next one takes it
                pending[-1][0].append(key=row.key, value=row.payload, timestamp=None, headers=headers)
            pending[-1][1].append(row)
        futures, groups = [], []
        for (topic, partition), pending in batches.items():
            for batch, batch_rows in pending:
                batch.close()
                futures.append(await self.producer.send_batch(batch, topic, partition=partition))
                groups.append(batch_rows)
        results = await asyncio.gather(*futures, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return
        if not any(isinstance(e, _REFUSED) for e in errors):
            raise errors[0]
        # Batches after a refused one in its partition fail on the producer's sequence: all of
        # them go again, one by one, through a new producer.
        await self._renew()
        again = [row for group, r in zip(groups, results, strict=True) if isinstance(r, BaseException)
                 for row in group]  # fmt: skip
        for row in again:
            await self._send_alone(row)

    async def _send_alone(self, row: OutboxRow) -> None:
        """Send one output by itself; park it when the broker (or the client) refuses it for good."""
        partition = self._partition_of.get((row.topic, row.key))
        if partition is None:
            partition = await self._partition(row.topic, row.key)
        try:
            sent = await self.producer.send(
                row.topic, row.payload, key=row.key, partition=partition, headers=kafka_headers(row)
            )
            await sent
        except _REFUSED as exc:
            error = f"{type(exc).__name__}: {exc} ({len(row.payload)} bytes of payload)"
            await self.store.park(row, error)
            self.parked_total += 1
            log.error(
                "output %s to %s refused by Kafka and parked (outbox_parked): %s",
                row.event_id, row.topic, error,
                extra={"event_id": row.event_id, "topic": row.topic, "payload_bytes": len(row.payload)},
            )  # fmt: skip
            if self.on_parked is not None:
                self.on_parked(row, error)
            await self._renew()

    async def _renew(self) -> None:
        """Replace the producer (its idempotent sequence is broken after a refusal)."""
        if self.renew_producer is None:
            return
        self.producer = await self.renew_producer()
        self._partitions.clear()
        self._partition_of.clear()

    async def _partition(self, topic: str, key: bytes | None) -> int:
        """The partition the default partitioner picks for a key (as any Kafka client would)."""
        partitions = self._partitions.get(topic)
        if partitions is None:
            found = await self.producer.partitions_for(topic)
            partitions = self._partitions[topic] = sorted(found)
        partition: int = self._partitioner(key, partitions, partitions)
        if key is not None:
            if len(self._partition_of) >= _PARTITION_CACHE:
                self._partition_of.clear()
            self._partition_of[(topic, key)] = partition
        return partition

    async def drain(self, timeout: float = 10.0) -> None:
        """Send everything pending (on shutdown), within `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        self.resync()
        while asyncio.get_running_loop().time() < deadline:
            try:
                if await self.relay_once() == 0:
                    return
            except Exception as exc:
                log.warning("outbox drain failed: %r", exc)
                return

    def stop(self) -> None:
        """Ask the run loop to end."""
        self._stopping = True
        self._wake.set()


_PLAIN_HEADERS = [_CONTENT_TYPE]  # shared by every output without trace headers (never mutated)


def kafka_headers(row: OutboxRow) -> list[tuple[str, bytes]]:
    """The Kafka headers of an output: its content type and the trace context it carries."""
    if not row.headers:
        return _PLAIN_HEADERS
    return [_CONTENT_TYPE, *((name, value.encode()) for name, value in row.headers.items())]

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
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from incident_contracts.constants import CLOUDEVENTS_CONTENT_TYPE
from incident_engine.adapters.store import EventStore, OutboxRow

log = logging.getLogger(__name__)
_CONTENT_TYPE = ("content-type", CLOUDEVENTS_CONTENT_TYPE.encode())
_DELETE_TIMEOUT = 5.0  # seconds a batch may hold sent ids before the relay deletes them itself
_PARTITION_CACHE = 100_000  # (topic, key) -> partition entries kept (murmur2 is pure Python in aiokafka)


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
    ) -> None:
        self.store = store
        self.producer = producer
        self.owned = owned
        self.batch = batch
        self.idle_seconds = idle_seconds
        self.sweep_seconds = sweep_seconds
        self.sent_total = 0
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
        """Produce in native batches per (topic, partition): far cheaper than a future per message."""
        batches: dict[tuple[str, int], list[Any]] = {}
        partition_of = self._partition_of
        for row in rows:
            partition = partition_of.get((row.topic, row.key))
            if partition is None:
                partition = await self._partition(row.topic, row.key)
            pending = batches.get((row.topic, partition))
            if pending is None:
                pending = batches[(row.topic, partition)] = [self.producer.create_batch()]
            headers = _headers(row)
            if pending[-1].append(key=row.key, value=row.payload, timestamp=None, headers=headers) is None:
                pending.append(self.producer.create_batch())  # full: the next one takes it
                pending[-1].append(key=row.key, value=row.payload, timestamp=None, headers=headers)
        futures = []
        for (topic, partition), pending in batches.items():
            for batch in pending:
                batch.close()
                futures.append(await self.producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)

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


def _headers(row: OutboxRow) -> list[tuple[str, bytes]]:
    if not row.headers:
        return _PLAIN_HEADERS
    return [_CONTENT_TYPE, *((name, value.encode()) for name, value in row.headers.items())]

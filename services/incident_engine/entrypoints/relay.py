"""The outbox relay: committed outputs of owned partitions to Kafka, in order, by an idempotent producer."""

from __future__ import annotations

import asyncio
import contextlib
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
    ) -> None:
        self.store = store
        self.producer = producer
        self.owned = owned
        self.batch = batch
        self.idle_seconds = idle_seconds
        self.sent_total = 0
        self._wake = asyncio.Event()
        self._partitioner = DefaultPartitioner()
        self._partitions: dict[str, list[int]] = {}
        self._stopping = False

    def wake(self) -> None:
        """Tell the relay a batch was committed (it also polls, so a lost wake-up only delays)."""
        self._wake.set()

    async def run(self) -> None:
        """Relay until stopped; errors are logged and retried (outputs stay in the outbox meanwhile)."""
        backoff = 0.1
        while not self._stopping:
            try:
                sent = await self.relay_once()
                backoff = 0.1
            except (KafkaError, OSError, ConnectionError) as exc:
                log.warning("outbox relay failed, retrying in %.1fs: %s", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            except Exception as exc:  # e.g. Postgres restarting: keep trying, never lose rows
                log.warning("outbox relay failed, retrying in %.1fs: %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if sent < self.batch:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.idle_seconds)

    async def relay_once(self) -> int:
        """Send one round of pending outputs; return how many were sent."""
        partitions = self.owned()
        if not partitions:
            return 0
        rows = await self.store.pending_outbox(partitions, self.batch)
        if not rows:
            return 0
        await self._send(rows)
        await self.store.mark_sent([row.id for row in rows])
        self.sent_total += len(rows)
        return len({row.id for row in rows})

    async def _send(self, rows: list[OutboxRow]) -> None:
        """Produce in native batches per (topic, partition): far cheaper than a future per message."""
        batches: dict[tuple[str, int], list[Any]] = {}
        for row in rows:
            partitions = self._partitions.get(row.topic)
            if partitions is None:
                found = await self.producer.partitions_for(row.topic)
                partitions = self._partitions[row.topic] = sorted(found)
            partition = self._partitioner(row.key, partitions, partitions)
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

    async def drain(self, timeout: float = 10.0) -> None:
        """Send everything pending (on shutdown), within `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
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


def _headers(row: OutboxRow) -> list[tuple[str, bytes]]:
    headers = [_CONTENT_TYPE]
    if row.headers:
        headers.extend((name, value.encode()) for name, value in row.headers.items())
    return headers

"""The outbox relay on the in-memory store: sends offered rows from memory, sweeps what nobody offered."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from incident_engine.adapters.memory import MemoryStore
from incident_engine.adapters.store import BatchWrite, OutboxRow
from incident_engine.entrypoints.relay import OutboxRelay

pytestmark = pytest.mark.unit

TOPIC = "incidents.breaches"


class Batch:
    """Stands in for aiokafka's BatchBuilder: collects appended messages."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes | None, bytes]] = []

    def append(self, *, key: bytes | None, value: bytes, timestamp: Any, headers: Any) -> object:
        self.messages.append((key, value))
        return object()

    def close(self) -> None:
        pass


class Producer:
    """Records what was sent, per (topic, partition), in order; can be told to fail once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes]] = []
        self.fail_next = False

    def create_batch(self) -> Batch:
        return Batch()

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[None]:
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("broker gone")
        self.sent.extend((topic, partition, value) for _, value in batch.messages)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class CountingStore(MemoryStore):
    """Counts the reads of the outbox table."""

    def __init__(self) -> None:
        super().__init__()
        self.sweeps = 0

    async def pending_outbox(self, partitions: list[int], limit: int) -> list[OutboxRow]:
        self.sweeps += 1
        return await super().pending_outbox(partitions, limit)


async def commit(store: MemoryStore, *payloads: tuple[int, str]) -> list[OutboxRow]:
    """Commit one batch of outputs ((input partition, payload) each); return the rows, ids set."""
    batch = BatchWrite("g")
    for partition, payload in payloads:
        batch.outbox.append(OutboxRow(partition, TOPIC, b"INC-1", payload, payload.encode()))
    await store.commit(batch)
    return batch.outbox


def payloads(producer: Producer) -> list[str]:
    return [value.decode() for _, _, value in producer.sent]


async def test_offered_rows_are_sent_from_memory_in_commit_order_and_deleted() -> None:
    store, producer = CountingStore(), Producer()
    relay = OutboxRelay(store, producer, lambda: [0, 1], sweep_seconds=3600)  # type: ignore[arg-type]
    assert await relay.relay_once() == 0  # the first round sweeps (nothing there yet)
    assert store.sweeps == 1
    relay.offer(await commit(store, (0, "a1"), (1, "b1"), (0, "a2")))
    relay.offer(await commit(store, (0, "a3")))
    assert relay.acknowledged() == []  # committed, not sent yet
    assert await relay.relay_once() == 3  # three outbox rows: two partitions, then one
    assert payloads(producer) == ["a1", "a2", "b1", "a3"]  # per outbox row, rows in commit order
    assert store.sweeps == 1  # nothing was read back from the table
    assert await store.outbox_backlog() == 4  # sent: deleted by the next batch's transaction
    assert sorted(relay.acknowledged()) == [1, 2, 3]  # in Kafka, their rows not yet deleted
    taken = relay.take_sent()
    assert sorted(taken) == [1, 2, 3] and relay.take_sent() == []
    assert sorted(relay.acknowledged()) == [1, 2, 3]  # handed to a batch: still there until it commits
    await store.commit(BatchWrite("g", sent_outbox=taken))
    relay.deleted(taken)
    assert await store.outbox_backlog() == 0 and relay.acknowledged() == []


async def test_sent_rows_no_batch_takes_are_deleted_by_the_relay_and_never_resent() -> None:
    store, producer = CountingStore(), Producer()
    relay = OutboxRelay(store, producer, lambda: [0], sweep_seconds=0, idle_seconds=3600)  # type: ignore[arg-type]
    relay.offer(await commit(store, (0, "once")))
    assert await relay.relay_once() == 1  # by a sweep (sweep_seconds=0: every round sweeps)
    assert await relay.relay_once() == 0  # the row is still there, sent: not sent again
    assert await store.outbox_backlog() == 1
    relay.idle_seconds = 0  # nobody took it in time
    assert await relay.relay_once() == 0
    assert await store.outbox_backlog() == 0 and payloads(producer) == ["once"]


async def test_ids_a_failed_batch_took_are_deleted_by_the_relay_later() -> None:
    store, producer = CountingStore(), Producer()
    relay = OutboxRelay(store, producer, lambda: [0], sweep_seconds=3600, idle_seconds=3600)  # type: ignore[arg-type]
    await relay.relay_once()
    relay.offer(await commit(store, (0, "x")))
    await relay.relay_once()
    taken = relay.take_sent()  # ... and the batch that took them never commits
    assert taken and await store.outbox_backlog() == 1
    relay.stop()  # on shutdown (or after a timeout) the relay deletes them itself
    await relay.drain()
    assert await store.outbox_backlog() == 0 and payloads(producer) == ["x"]


async def test_a_sweep_sends_rows_nobody_offered_and_stale_offers_are_dropped() -> None:
    store, producer = CountingStore(), Producer()
    relay = OutboxRelay(store, producer, lambda: [0], sweep_seconds=3600)  # type: ignore[arg-type]
    before = await commit(store, (0, "left by a crashed engine"))
    assert await relay.relay_once() == 1  # the start-up sweep finds it
    relay.offer(before)  # an offer of a row a sweep already sent is ignored
    assert await relay.relay_once() == 0
    assert payloads(producer) == ["left by a crashed engine"]


async def test_rows_of_partitions_given_up_stay_for_their_new_owner() -> None:
    store, producer = CountingStore(), Producer()
    owned = [0, 1]
    relay = OutboxRelay(store, producer, lambda: list(owned), sweep_seconds=3600)  # type: ignore[arg-type]
    await relay.relay_once()
    relay.offer(await commit(store, (0, "mine"), (1, "theirs")))
    owned.remove(1)  # revoked before the relay ran: the new owner's sweep sends it
    assert await relay.relay_once() == 1
    assert payloads(producer) == ["mine"]
    assert [row.payload for row in await store.pending_outbox([1], 10)] == [b"theirs"]
    await store.commit(BatchWrite("g", sent_outbox=relay.take_sent()))
    assert [row.payload for row in await store.pending_outbox([0, 1], 10)] == [b"theirs"]


async def test_after_a_failed_send_everything_is_resent_from_the_table_in_order() -> None:
    store, producer = CountingStore(), Producer()
    relay = OutboxRelay(store, producer, lambda: [0], sweep_seconds=3600, idle_seconds=0.01)  # type: ignore[arg-type]
    await relay.relay_once()
    relay.offer(await commit(store, (0, "x1")))
    relay.offer(await commit(store, (0, "x2")))
    producer.fail_next = True
    runner = asyncio.create_task(relay.run())
    for _ in range(200):
        if await store.outbox_backlog() == 0:
            break
        await asyncio.sleep(0.01)
    relay.stop()
    await runner
    assert payloads(producer) == ["x1", "x2"]
    assert store.sweeps >= 2  # the failure made it read the table again


async def test_drain_sends_what_is_left() -> None:
    store, producer = CountingStore(), Producer()
    relay = OutboxRelay(store, producer, lambda: [0], sweep_seconds=3600)  # type: ignore[arg-type]
    await relay.relay_once()
    await commit(store, (0, "committed, never offered"))
    relay.stop()
    await relay.drain()
    assert payloads(producer) == ["committed, never offered"]
    assert await store.outbox_backlog() == 0


class SlowSweepStore(CountingStore):
    """A sweep whose read takes a while: something else can commit meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.during_read: list[BatchWrite] = []

    async def pending_outbox(self, partitions: list[int], limit: int) -> list[OutboxRow]:
        rows = await super().pending_outbox(partitions, limit)  # the read's snapshot ...
        for batch in self.during_read:  # ... then a batch deletes sent rows before it returns
            await self.commit(batch)
            self.on_commit(batch)
        self.during_read.clear()
        return rows

    def on_commit(self, batch: BatchWrite) -> None:
        pass


async def test_a_sweep_never_resends_rows_deleted_while_it_read() -> None:
    store, producer = SlowSweepStore(), Producer()
    relay = OutboxRelay(store, producer, lambda: [0], sweep_seconds=3600, idle_seconds=3600)  # type: ignore[arg-type]
    await relay.relay_once()
    relay.offer(await commit(store, (0, "sent once")))
    assert await relay.relay_once() == 1
    store.during_read.append(BatchWrite("g", sent_outbox=relay.take_sent()))
    store.on_commit = lambda batch: relay.deleted(batch.sent_outbox)  # type: ignore[method-assign]
    relay.resync()  # sweep now
    assert await relay.relay_once() == 0
    assert payloads(producer) == ["sent once"] and await store.outbox_backlog() == 0


class SizeLimitedProducer(Producer):
    """A broker with a small max.message.bytes: a batch holding a payload over `limit` is refused
    whole, and (as aiokafka's idempotent producer) every later send fails until it is replaced."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.broken = False

    def _outcome(self, values: list[bytes]) -> asyncio.Future[None]:
        from aiokafka.errors import MessageSizeTooLargeError, OutOfOrderSequenceNumber

        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.broken:
            done.set_exception(OutOfOrderSequenceNumber())
        elif any(len(v) > self.limit for v in values):
            self.broken = True
            done.set_exception(MessageSizeTooLargeError())
        else:
            done.set_result(None)
        return done

    async def send_batch(self, batch: Batch, topic: str, *, partition: int) -> asyncio.Future[None]:
        done = self._outcome([value for _, value in batch.messages])
        if not done.exception():
            self.sent.extend((topic, partition, value) for _, value in batch.messages)
        return done

    async def send(self, topic: str, value: bytes, *, key: Any, partition: int, headers: Any) -> Any:
        done = self._outcome([value])
        if not done.exception():
            self.sent.append((topic, partition, value))
        return done


async def test_an_output_the_broker_refuses_is_parked_and_the_rest_goes_on() -> None:
    store = MemoryStore()
    producers = [SizeLimitedProducer(limit=10)]

    async def renew() -> Any:
        producers.append(SizeLimitedProducer(limit=10))
        return producers[-1]

    parked: list[str] = []
    relay = OutboxRelay(
        store, producers[0], lambda: [0], sweep_seconds=3600,  # type: ignore[arg-type]
        renew_producer=renew, on_parked=lambda row, error: parked.append(row.event_id),
    )  # fmt: skip
    await relay.relay_once()
    relay.offer(await commit(store, (0, "a"), (0, "b" * 50), (0, "c")))
    relay.offer(await commit(store, (0, "d")))
    assert await relay.relay_once() == 2
    sent = [value.decode() for p in producers for _, _, value in p.sent]
    assert sent == ["a", "c", "d"]  # in order, without the refused one
    assert parked == ["b" * 50] and relay.parked_total == 1
    ((row, error),) = await store.parked_outputs()
    assert row.payload == b"b" * 50 and "MessageSizeTooLargeError" in error
    relay.offer(await commit(store, (0, "e")))
    assert await relay.relay_once() == 1 and producers[-1].sent[-1][2] == b"e"  # not wedged

"""No input stops a partition: the loop isolates the message (or timer) a batch fails on, retries the
infrastructure's failures, and retakes partitions whose assignment failed (in-memory store, fake consumer)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError
from asyncpg.exceptions._base import DataError as ArgumentError

from incident_contracts import TOPIC_EVENTS
from incident_engine.adapters.memory import MemoryStore
from incident_engine.adapters.store import BatchWrite, OffsetConflict, TimerRow
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.entrypoints.consumer import EngineLoop
from incident_engine.entrypoints.isolation import bisect, describe, is_infrastructure
from incident_engine.entrypoints.processor import BatchProcessor, BatchResult
from tests.unit.test_processor import T0, Record, ev

pytestmark = pytest.mark.unit


class FakeConsumer:
    """The part of AIOKafkaConsumer the loop uses, over in-memory partitions."""

    def __init__(self, partitions: dict[int, list[dict[str, Any] | bytes]]) -> None:
        self.log: dict[int, list[Record]] = {}
        for partition, bodies in partitions.items():
            self.log[partition] = [
                Record(n, b if isinstance(b, bytes) else orjson.dumps(b),
                       (b["subject"] if isinstance(b, dict) else "raw").encode(), partition)
                for n, b in enumerate(bodies)
            ]  # fmt: skip
        self.positions = dict.fromkeys(self.log, 0)
        self.paused: set[int] = set()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp.partition] = offset

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.positions[tp.partition] = 0

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp.partition]

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.log[tp.partition])

    def last_poll_timestamp(self, tp: TopicPartition) -> int | None:
        return None  # a caught-up partition's watermark is then the wall clock

    def pause(self, *tps: TopicPartition) -> None:
        self.paused |= {tp.partition for tp in tps}

    def resume(self, *tps: TopicPartition) -> None:
        self.paused -= {tp.partition for tp in tps}

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[TopicPartition, Any]:
        await asyncio.sleep(0.001)
        budget = max_records or 1_000_000
        fetched = {}
        for partition in sorted(self.log):
            start = self.positions[partition]
            records = self.log[partition][start : start + budget] if partition not in self.paused else []
            if records:
                fetched[TopicPartition(TOPIC_EVENTS, partition)] = records
                self.positions[partition] += len(records)
                budget -= len(records)
            if budget <= 0:
                break
        return fetched


NUL_ERROR = asyncpg.exceptions.CharacterNotInRepertoireError(
    'invalid byte sequence for encoding "UTF8": 0x00'
)


class FaultyStore(MemoryStore):
    """The in-memory store, refusing what Postgres would refuse and failing like a network would."""

    def __init__(self) -> None:
        super().__init__()
        self.refused: set[str] = set()  # incidents whose events the "database" cannot store
        self.commit_failures: list[BaseException] = []  # raised by the next commits, in order
        self.timer_load_failures = 0
        self.refuse_dead_letters = False
        self.commits = 0

    async def commit(self, batch: BatchWrite, after: Awaitable[object] | None = None) -> None:
        self.commits += 1
        if self.commit_failures:
            raise self.commit_failures.pop(0)
        if any(e.incident_id in self.refused for e in batch.events):
            raise NUL_ERROR
        if self.refuse_dead_letters and any(b'"unprocessable"' in o.payload for o in batch.outbox):
            raise NUL_ERROR
        await super().commit(batch, after=after)

    async def load_timers(self, partitions: list[int]) -> list[TimerRow]:
        if self.timer_load_failures:
            self.timer_load_failures -= 1
            raise asyncpg.exceptions.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation"
            )
        return await super().load_timers(partitions)


class Harness:
    """An EngineLoop on the faulty store and the fake consumer; records what each batch emitted."""

    def __init__(self, partitions: dict[int, list[dict[str, Any] | bytes]], batch_max: int = 500) -> None:
        self.store = FaultyStore()
        self.domain = SlaDomain(PolicyRegistry.load())
        self.processor = BatchProcessor(self.domain, self.store, "g", max_message_bytes=4096)
        self.now = T0 + timedelta(seconds=1)
        self.results: list[BatchResult] = []
        self.dropped: list[str] = []
        self.loop = EngineLoop(
            self.processor, self.store, batch_max=batch_max, batch_timeout_ms=5, clock=lambda: self.now,
            on_batch=lambda result, _s: self.results.append(result), on_timer_dropped=self.dropped.append,
        )  # fmt: skip
        self.consumer = FakeConsumer(partitions)
        self.loop.consumer = self.consumer  # type: ignore[assignment]

    async def assign(self) -> None:
        await self.loop.on_partitions_assigned({TopicPartition(TOPIC_EVENTS, p) for p in self.consumer.log})

    async def run_until(self, check: Callable[[], bool], timeout: float = 5.0) -> None:
        self.loop._stopping = False  # run again after a previous run_until
        task = asyncio.create_task(self.loop.run(self.consumer))  # type: ignore[arg-type]
        try:
            deadline = time.monotonic() + timeout
            while not check():
                if task.done():
                    task.result()
                if time.monotonic() > deadline:
                    raise AssertionError(f"timed out; offsets {self.store.offsets}, outputs {self.reasons()}")
                await asyncio.sleep(0.01)
        finally:
            self.loop.stop()
            await asyncio.wait_for(task, 5)

    def offset(self, partition: int) -> int:
        return self.store.offsets.get(("g", TOPIC_EVENTS, partition), 0)

    def rejected(self) -> list[dict[str, Any]]:
        outs = [orjson.loads(o.payload) for o in self.store.outbox]
        return [o for o in outs if o["type"] == "incident.rejected"]

    def reasons(self) -> list[tuple[str, str]]:
        return [(o["subject"], o["data"]["reason"]) for o in self.rejected()]

    def logged(self) -> list[tuple[str, int]]:
        return sorted(self.store.log)


def _stream() -> dict[int, list[dict[str, Any] | bytes]]:
    return {
        0: [
            ev("reported", "A", T0, severity="high", region="uk"),
            ev("reported", "P", T0, severity="high", region="uk"),  # the culprit
            ev("acknowledged", "A", T0),
            ev("reported", "B", T0, severity="low", region="au"),
            ev("acknowledged", "P", T0),  # unknown_incident, as the report never landed
        ],
        1: [ev("reported", "C", T0, severity="critical", region="us"), ev("acknowledged", "C", T0)],
    }


@pytest.mark.parametrize("batch_max", [500, 2])  # one batch; batches whose commits overlap decisions
async def test_a_value_the_store_refuses_dead_letters_only_its_message(batch_max: int) -> None:
    h = Harness(_stream(), batch_max=batch_max)
    h.store.refused.add("P")
    await h.assign()
    started = time.monotonic()
    await h.run_until(lambda: h.offset(0) == 5 and h.offset(1) == 2)
    assert time.monotonic() - started < 3.0
    assert h.logged() == [("A", 1), ("A", 2), ("B", 1), ("C", 1), ("C", 2)]
    assert h.reasons() == [("P", "unprocessable"), ("P", "unknown_incident")]
    (dead,) = [o for o in h.rejected() if o["data"]["reason"] == "unprocessable"]
    assert dead["data"]["detail"] == describe(NUL_ERROR)
    assert dead["data"]["original"].encode() == h.consumer.log[0][1].value
    counted = [o.data["reason"] for r in h.results for o in r.outputs if o.type == "incident.rejected"]
    assert counted.count("unprocessable") == 1  # reaches incidents_rejections_total{reason}
    assert h.loop.status()["partitions"] == [0, 1] and not h.loop.isolation.active


async def test_a_domain_exception_dead_letters_only_its_message() -> None:
    h = Harness(_stream(), batch_max=3)
    handle = h.domain.handle

    def exploding(incident: Any, event: Any, now: datetime, raw: bytes | None = None) -> Any:
        if event.subject == "P":
            raise OverflowError("date value out of range")
        return handle(incident, event, now, raw)

    h.domain.handle = exploding  # type: ignore[method-assign]
    await h.assign()
    await h.run_until(lambda: h.offset(0) == 5 and h.offset(1) == 2)
    assert h.logged() == [("A", 1), ("A", 2), ("B", 1), ("C", 1), ("C", 2)]
    assert h.reasons() == [("P", "unprocessable"), ("P", "unprocessable")]
    assert all("OverflowError: date value out of range" in o["data"]["detail"] for o in h.rejected())


async def test_a_dead_letter_that_cannot_be_stored_skips_the_message() -> None:
    h = Harness(_stream(), batch_max=2)
    h.store.refused.add("P")
    h.store.refuse_dead_letters = True
    await h.assign()
    await h.run_until(lambda: h.offset(0) == 5 and h.offset(1) == 2)
    assert h.logged() == [("A", 1), ("A", 2), ("B", 1), ("C", 1), ("C", 2)]
    assert h.reasons() == [("P", "unknown_incident")]


async def test_an_infrastructure_failure_is_retried_and_dead_letters_nothing() -> None:
    h = Harness(_stream(), batch_max=2)
    h.store.commit_failures = [
        ConnectionResetError("connection reset by peer"),
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        TimeoutError(),
    ]
    await h.assign()
    await h.run_until(lambda: h.offset(0) == 5 and h.offset(1) == 2)
    assert h.store.commit_failures == []
    assert h.logged() == [("A", 1), ("A", 2), ("B", 1), ("C", 1), ("C", 2), ("P", 1), ("P", 2)]
    assert h.reasons() == []


async def test_a_timer_that_cannot_fire_is_dropped_and_the_others_fire() -> None:
    h = Harness({0: [ev("reported", "D", T0, severity="critical", region="uk"),
                     ev("reported", "E", T0, severity="critical", region="uk")]})  # fmt: skip
    fire_due = h.domain.fire_due

    def exploding(incident: Any, now: datetime, **horizons: Any) -> Any:
        if incident.id == "D":
            raise ZeroDivisionError("division by zero")
        return fire_due(incident, now, **horizons)

    h.domain.fire_due = exploding  # type: ignore[method-assign]
    await h.assign()
    await h.run_until(lambda: h.offset(0) == 2 and len(h.loop.timers) == 2)
    h.now = T0 + timedelta(minutes=8)  # both ack 50 % warnings are due
    await h.run_until(lambda: bool(h.dropped) and h.store.firings != set())
    assert h.dropped == ["D"]
    warnings = [orjson.loads(o.payload) for o in h.store.outbox]
    assert [(w["subject"], w["type"]) for w in warnings if w["type"] == "incident.sla.warning"] == [
        ("E", "incident.sla.warning")
    ]
    assert (
        "D" in h.loop.isolation.dropped_timers and "D" in h.store.timers
    )  # the durable row stays for a fixed engine
    # a reset (any failed batch, a rebalance) does not bring the broken timer back into the heap
    await h.loop._reset()
    assert h.loop.timers.pop_due({0: (h.now + timedelta(hours=1)).timestamp()}, limit=10) == [("E", 0)]


async def test_a_failed_assignment_is_retried_and_not_ready_until_timers_are_loaded() -> None:
    h = Harness({0: [ev("reported", "F", T0, severity="critical", region="au")]})
    h.store.timers["G"] = TimerRow("G", 0, T0 + timedelta(hours=1))  # armed by a previous owner
    h.store.timer_load_failures = 2
    await h.assign()
    assert not h.loop.ready.is_set()
    assert h.consumer.paused == {0}  # nothing consumed from wherever Kafka says meanwhile
    await h.run_until(lambda: h.loop.ready.is_set() and h.offset(0) == 1)
    assert h.store.timer_load_failures == 0 and h.consumer.paused == set()
    later = (T0 + timedelta(days=1)).timestamp()
    assert {"F", "G"} <= {i for i, _ in h.loop.timers.pop_due({0: later}, limit=10)}


def test_errors_are_classified_by_whose_fault_they_are() -> None:
    from aiokafka.errors import KafkaConnectionError

    infrastructure = [
        ConnectionRefusedError(), TimeoutError(), OSError("no route"), KafkaConnectionError(),
        OffsetConflict("moved"), asyncpg.exceptions.ConnectionDoesNotExistError("closed"),
        asyncpg.exceptions.AdminShutdownError("shutdown"), asyncpg.exceptions.QueryCanceledError("timeout"),
        asyncpg.exceptions.SerializationError("retry"), asyncpg.exceptions.UndefinedTableError("bug"),
    ]  # fmt: skip
    data = [
        NUL_ERROR, asyncpg.exceptions.UntranslatableCharacterError("x"),
        asyncpg.exceptions.NumericValueOutOfRangeError("x"), asyncpg.exceptions.UniqueViolationError("x"),
        asyncpg.exceptions.ProgramLimitExceededError("index row too big"), ValueError("x"),
        OverflowError("x"), KeyError("x"), UnicodeEncodeError("utf-8", "x", 0, 1, "surrogate"),
        ArgumentError("invalid input for query argument $1: 1099511627776 (value out of int32 range)"),
    ]  # fmt: skip
    assert [e for e in infrastructure if not is_infrastructure(e)] == []
    assert [e for e in data if is_infrastructure(e)] == []
    assert len(describe(ValueError("x" * 5000))) == 1000


async def test_bisect_finds_every_culprit_and_keeps_order() -> None:
    done: list[int] = []
    quarantined: list[int] = []

    async def attempt(items: Any) -> None:
        if any(i in (3, 4, 9) for i in items):
            raise ValueError("bad")
        done.extend(items)

    async def quarantine(item: int, _exc: BaseException) -> None:
        quarantined.append(item)

    assert await bisect(list(range(12)), attempt, quarantine) == 3
    assert quarantined == [3, 4, 9]
    assert done == [0, 1, 2, 5, 6, 7, 8, 10, 11]

    async def unreachable(_items: Any) -> None:
        raise ConnectionResetError()

    with pytest.raises(ConnectionResetError):
        await bisect([1, 2], unreachable, quarantine)


async def test_marking_for_isolation_survives_a_partition_revoked_meanwhile() -> None:
    """A rebalance while the loop marks what it fetched: the partition no longer assigned is skipped
    (aiokafka refuses to say anything of it), the loop does not die."""
    h = Harness({0: [ev("reported", "R0", T0, severity="critical", region="uk")],
                 1: [ev("reported", "R1", T0, severity="critical", region="uk")]})  # fmt: skip
    await h.assign()

    async def position(tp: TopicPartition) -> int:
        if tp.partition == 1:
            raise IllegalStateError("Partition is not assigned")
        return 1

    def highwater(tp: TopicPartition) -> int:
        assert tp.partition != 1, "Partition is not assigned"
        return 1

    h.consumer.position = position  # type: ignore[method-assign]
    h.consumer.highwater = highwater  # type: ignore[method-assign]
    await h.loop.isolation.suspect_fetched()
    assert h.loop.isolation.suspects == {0: 1}


async def test_a_conflict_that_does_not_clear_is_retried_with_backoff() -> None:
    """Stored offsets ahead of a truncated log (or a replica that keeps claiming): every batch is
    fenced off. The loop re-reads once at once, then backs off, instead of spinning."""
    h = Harness({0: [ev("reported", "C", T0, severity="critical", region="uk")]})
    await h.assign()
    h.store.commit_failures = [OffsetConflict("incidents.events[0] moved on")] * 1000
    with pytest.raises(AssertionError):
        await h.run_until(lambda: False, timeout=1.5)
    assert 2 <= h.store.commits <= 8  # 1 at once, then 0.2 + 0.4 + 0.8 s of backoff (was: thousands)


async def test_a_dropped_timer_comes_back_when_a_new_event_changes_its_incident() -> None:
    h = Harness({0: [ev("reported", "D", T0, severity="critical", region="uk")]})
    await h.assign()
    await h.run_until(lambda: h.offset(0) == 1)
    h.loop.isolation.dropped_timers["D"] = 0  # its firing failed once
    h.consumer.log[0].append(
        Record(1, orjson.dumps(ev("acknowledged", "D", T0 + timedelta(minutes=1))), b"D")
    )
    await h.run_until(lambda: h.offset(0) == 2)
    assert "D" not in h.loop.isolation.dropped_timers
    await h.loop._reset()  # a reset reloads its (restore) timer from its row
    assert "D" in {i for i, _ in h.loop.timers.pop_due({0: (T0 + timedelta(days=1)).timestamp()})}

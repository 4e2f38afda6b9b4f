"""Due timers are not held by a slow Postgres: they fire while a batch waits for its read or for a
commit, on cached incidents other than the waiting batch's; the incidents whose timers come due soon
are prefetched into the cache, and a prefetch never puts a stale state there (issue 17)."""

from __future__ import annotations

import asyncio
import random
import types
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.consumer.subscription_state import SubscriptionState

from incident_contracts import TOPIC_EVENTS
from incident_engine.adapters.memory import MemoryStore
from incident_engine.domain import Incident, PolicyRegistry, SlaDomain
from incident_engine.entrypoints.consumer import EngineLoop
from incident_engine.entrypoints.processor import BatchProcessor
from incident_engine.entrypoints.timers import TimerHeap
from tests.unit.test_processor import Feed, Record, ev
from tests.unit.test_watermarks import NOW, Clock, ScriptedConsumer

pytestmark = pytest.mark.unit
M = timedelta(minutes=1)
S = timedelta(seconds=1)


class SlowReads(MemoryStore):
    """A MemoryStore whose reads answer only once their gate is open: `answer` for a batch's lookup
    (then raising `fail` if set), `prefetched` for a prefetch (`load_incidents`)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()
        self.answer.set()
        self.prefetched = asyncio.Event()
        self.prefetched.set()
        self.reads = 0
        self.fail: Exception | None = None  # what a lookup raises once answered, if set

    async def lookup(self, event_keys, incident_ids):  # type: ignore[no-untyped-def]
        self.reads += 1
        found = await self.known_event_ids(event_keys), await MemoryStore.load_incidents(self, incident_ids)
        await self.answer.wait()
        if self.fail is not None:
            raise self.fail
        return found

    async def load_incidents(self, incident_ids: list[str]) -> dict[str, Incident]:
        found = await super().load_incidents(incident_ids)
        await self.prefetched.wait()
        return found


async def loop_with(store: MemoryStore, consumer: ScriptedConsumer, clock: Clock) -> EngineLoop:
    processor = BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "g")
    loop = EngineLoop(processor, store, clock=clock, batch_timeout_ms=20)
    loop.consumer = consumer  # type: ignore[assignment]
    loop.assigned = {0}
    await loop._take([0])
    return loop


def sent(store: MemoryStore) -> list[tuple[str, str, str | None]]:
    """(incident, type, clock) of every output the store holds, in commit order."""
    out = [orjson.loads(row.payload) for row in store.outbox]
    return [(o["subject"], o["type"], (o.get("data") or {}).get("clock")) for o in out]


async def settle(task: asyncio.Task[object], until: object, tries: int = 200) -> None:
    for _ in range(tries):
        if until():  # type: ignore[operator]
            return
        assert not task.done()
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def x_reported_then_slow_reads() -> tuple[SlowReads, ScriptedConsumer, EngineLoop, Clock]:
    """X reported (critical, au; cached, as reported here; its first warning due at 7.5 min), then
    every read of Postgres waits for `answer`."""
    store = SlowReads()
    consumer = ScriptedConsumer(per_fetch=10)
    consumer.publish(0, ev("reported", "X", NOW, severity="critical", region="au"))
    clock = Clock(NOW + M)
    loop = await loop_with(store, consumer, clock)
    assert await loop.step() is not None
    await loop.drain()
    store.answer.clear()
    return store, consumer, loop, clock


async def no_ack_warning_once_the_read_answers(
    step: asyncio.Task[object], store: SlowReads, loop: EngineLoop, clock: Clock, before: object
) -> None:
    """Nothing fired while the batch waited; then its read answers, the loop runs on, and X never
    gets its acknowledgement warning."""
    for _ in range(10):
        await asyncio.sleep(0.005)  # the timers had their turns
    assert sent(store) == before
    store.answer.set()
    assert await step is not None
    clock.now = NOW + 9 * M
    while await loop.step() is not None:
        pass
    await loop.drain()
    assert [s for s in sent(store) if s[1] == "incident.sla.warning" and s[2] == "ack"] == []


async def test_a_due_timer_fires_while_a_batch_waits_for_its_read_of_postgres() -> None:
    store, consumer, loop, clock = await x_reported_then_slow_reads()
    consumer.publish(0, ev("reported", "Y", NOW + M, severity="critical", region="au"))  # read: not cached
    step = asyncio.create_task(loop.step())
    await settle(step, lambda: store.reads == 2)
    clock.now = NOW + 8 * M
    warned = ("X", "incident.sla.warning", "ack")
    await settle(step, lambda: warned in sent(store))  # fired and committed while Y's read waits
    assert not any(subject == "Y" for subject, _, _ in sent(store))
    store.answer.set()
    result = await step
    assert result is not None and [e.incident_id for e in result.write.events] == ["Y"]
    await loop.drain()
    assert sent(store).count(warned) == 1  # once, not again by the batch that waited
    assert [e["incident_id"] for _, e in sorted(store.log.items(), key=lambda kv: kv[1]["kafka_offset"])] == [
        "X", "Y"]  # fmt: skip


async def test_the_waiting_batchs_incidents_do_not_fire_before_its_events() -> None:
    """The other direction: X's acknowledgement, stamped before X's warning was due, is in the batch
    that waits; X's timer comes due meanwhile, but it is the waiting batch's: no warning at all."""
    store, consumer, loop, clock = await x_reported_then_slow_reads()
    before = sent(store)
    consumer.publish(
        0,
        ev("acknowledged", "X", NOW + 7 * M),  # in time for the 7.5-minute warning
        ev("reported", "Y", NOW + 7 * M, severity="critical", region="au"),  # makes the batch read
    )
    clock.now = NOW + 7 * M + 1000 * timedelta(microseconds=1)
    step = asyncio.create_task(loop.step())
    await settle(step, lambda: store.reads == 2)
    clock.now = NOW + 8 * M  # X's warning moment passes while the batch waits
    await no_ack_warning_once_the_read_answers(step, store, loop, clock, before)


def logged(store: MemoryStore) -> list[tuple[str, str]]:
    """(incident, event type) of every logged event, in offset order."""
    return [
        (e["incident_id"], e["type"]) for e in sorted(store.log.values(), key=lambda e: e["kafka_offset"])
    ]


async def test_a_batchs_own_due_timer_of_another_incident_fires_while_it_waits() -> None:
    """X's warning is already due when the step begins, so the batch of Y's report takes it, to fire
    after Y; but Y is not cached and its read waits: X's warning, which needs no read and is not Y's,
    is taken out of the batch and fires meanwhile (it waited 60-70 ms for Y's read under I/O
    pressure). X is fired once, at once: not after the loop's longest wait, which knows only the
    timers still in the heap (found in review)."""
    store, consumer, loop, clock = await x_reported_then_slow_reads()
    loop.batch_timeout_ms = 2000  # no other timer is due soon: the loop's wait would be this long
    consumer.publish(0, ev("reported", "Y", NOW + 7 * M, severity="critical", region="au"))
    clock.now = NOW + 8 * M  # X's 7.5-minute warning is due before the step
    step = asyncio.create_task(loop.step())
    await settle(step, lambda: store.reads == 2)
    warned = ("X", "incident.sla.warning", "ack")
    await settle(step, lambda: warned in sent(store), tries=100)  # 0.5 s at most, not 2 s
    assert not any(subject == "Y" for subject, _, _ in sent(store))
    store.answer.set()
    result = await step
    assert result is not None and [e.incident_id for e in result.write.events] == ["Y"]
    assert "X" not in result.write.incidents  # not fired again by the batch
    await loop.drain()
    assert sent(store).count(warned) == 1


async def test_a_batchs_due_timer_of_an_incident_it_names_waits_for_its_events() -> None:
    """The other direction: X's acknowledgement, stamped in time for the warning, is in the batch
    with X's due warning and Y's uncached report; while Y's read waits, X's warning must stay with
    the batch, which applies the acknowledgement first: no warning."""
    store, consumer, loop, clock = await x_reported_then_slow_reads()
    before = sent(store)
    consumer.publish(
        0,
        ev("acknowledged", "X", NOW + 7 * M),
        ev("reported", "Y", NOW + 7 * M, severity="critical", region="au"),
    )
    clock.now = NOW + 8 * M
    step = asyncio.create_task(loop.step())
    await settle(step, lambda: store.reads == 2)
    for _ in range(10):
        await asyncio.sleep(0.005)  # the timers had their turns
    assert sent(store) == before
    store.answer.set()
    assert await step is not None
    await loop.drain()
    assert [s for s in sent(store) if s[1] == "incident.sla.warning" and s[2] == "ack"] == []


async def test_input_arriving_while_a_batch_waits_is_read_ahead_and_timers_fire() -> None:
    """Input that arrives while a batch waits for its read left the partition behind, and a partition
    that is behind fires nothing: under I/O pressure every read took 60-70 ms while input kept coming,
    and timers were 70-120 ms late. It is read meanwhile (not decided): the partition is caught up,
    X's warning fires, and the next step decides what was read, once and in order."""
    store, consumer, loop, clock = await x_reported_then_slow_reads()
    consumer.publish(0, ev("reported", "Y", NOW + M, severity="critical", region="au"))  # read: not cached
    step = asyncio.create_task(loop.step())
    await settle(step, lambda: store.reads == 2)
    consumer.publish(0, ev("reported", "Z", NOW + 2 * M, severity="high", region="us"))  # comes meanwhile
    clock.now = NOW + 8 * M
    warned = ("X", "incident.sla.warning", "ack")
    await settle(step, lambda: warned in sent(store))  # with Z read ahead, partition 0 is caught up
    assert [r.key for r in loop._ahead] == [b"Z"]
    store.answer.set()
    result = await step
    assert result is not None and [e.incident_id for e in result.write.events] == ["Y"]
    result = await loop.step()  # Z, read ahead: decided now
    assert result is not None and [e.incident_id for e in result.write.events] == ["Z"]
    assert loop._ahead == [] and await loop.step() is None
    await loop.drain()
    assert logged(store) == [
        ("X", "incident.reported"),
        ("Y", "incident.reported"),
        ("Z", "incident.reported"),
    ]
    assert sent(store).count(warned) == 1
    assert store.offsets[("g", "incidents.events", 0)] == 3


async def test_an_incident_read_ahead_does_not_fire_before_its_event() -> None:
    """The other direction: what is read ahead is not decided yet. X's acknowledgement, stamped in time
    for its warning, arrives while a batch of Y waits; it is read ahead, X's warning moment passes:
    X must wait for its acknowledgement, not fire a warning that `simulate` would not."""
    store, consumer, loop, clock = await x_reported_then_slow_reads()
    before = sent(store)
    consumer.publish(0, ev("reported", "Y", NOW + 7 * M, severity="critical", region="au"))
    clock.now = NOW + 7 * M + S
    step = asyncio.create_task(loop.step())
    await settle(step, lambda: store.reads == 2)
    consumer.publish(0, ev("acknowledged", "X", NOW + 7 * M))  # in time for the 7.5-minute warning
    clock.now = NOW + 8 * M
    await settle(step, lambda: [r.key for r in loop._ahead] == [b"X"])
    await no_ack_warning_once_the_read_answers(step, store, loop, clock, before)
    assert logged(store)[-1] == ("X", "incident.acknowledged")


async def test_more_than_a_batch_is_read_ahead_and_decided_a_batch_at_a_time() -> None:
    """Input that keeps arriving through a long wait is read ahead beyond one batch (with one, the
    partitions fell behind again and nothing of theirs fired: traced in `make bench`, issue 17);
    the next steps decide it a batch each, oldest first, every event once and in order."""
    store, consumer, loop, clock = await x_reported_then_slow_reads()
    loop.batch_max = 2
    consumer.publish(0, ev("reported", "Y", NOW + M, severity="critical", region="au"))  # read: not cached
    step = asyncio.create_task(loop.step())
    await settle(step, lambda: store.reads == 2)
    names = [f"Z{n}" for n in range(1, 6)]
    consumer.publish(0, *(ev("reported", z, NOW + 2 * M, severity="low", region="uk") for z in names))
    await settle(step, lambda: len(loop._ahead) == 5)  # two and a half batches
    assert loop.caught_up == {0}
    clock.now = NOW + 8 * M
    warned = ("X", "incident.sla.warning", "ack")
    await settle(step, lambda: warned in sent(store))
    store.answer.set()
    result = await step
    assert result is not None and [e.incident_id for e in result.write.events] == ["Y"]
    decided = []
    while (result := await loop.step()) is not None:
        decided.append([e.incident_id for e in result.write.events])
        assert loop.caught_up == {0}  # what is left read ahead was read: the partition is not behind
    assert decided == [["Z1", "Z2"], ["Z3", "Z4"], ["Z5"]]
    await loop.drain()
    assert logged(store) == [("X", "incident.reported"), ("Y", "incident.reported")] + [
        (z, "incident.reported") for z in names
    ]
    assert sent(store).count(warned) == 1
    assert store.offsets[("g", "incidents.events", 0)] == 7


async def x_event_read_ahead_behind_a_batch(
    x_event: dict[str, object],
) -> tuple[SlowReads, EngineLoop, Clock, list[tuple[str, str, str | None]]]:
    """X reported (warning due at 7.5 min); a batch of Y waits for its read while Z1, Z2 (a batch's
    worth, `batch_max` 2) and then `x_event` arrive and are read ahead; then the read answers, the
    batch of Y is decided, and the clock passes X's warning moment. Returns what was sent before."""
    store, consumer, loop, clock = await x_reported_then_slow_reads()
    loop.batch_max = 2
    before = sent(store)
    consumer.publish(0, ev("reported", "Y", NOW + 7 * M, severity="critical", region="au"))
    clock.now = NOW + 7 * M + S
    step = asyncio.create_task(loop.step())
    await settle(step, lambda: store.reads == 2)
    consumer.publish(
        0,
        ev("reported", "Z1", NOW + 7 * M, severity="low", region="uk"),
        ev("reported", "Z2", NOW + 7 * M, severity="low", region="uk"),
        x_event,
    )
    await settle(step, lambda: [r.key for r in loop._ahead] == [b"Z1", b"Z2", b"X"])
    store.answer.set()
    assert await step is not None
    clock.now = NOW + 8 * M  # X's warning moment has passed when the next step begins
    return store, loop, clock, before


async def test_an_incident_left_read_ahead_does_not_fire_in_the_batch_before_its_event() -> None:
    """The other direction: X's acknowledgement, stamped in time for its warning, is read ahead behind
    a batch's worth of other input. The step that decides that batch finds X's warning due, but X's
    acknowledgement is still read ahead, for the next step: X must wait for it, not fire a warning
    that `simulate` would not."""
    # in time for the 7.5-minute warning:
    store, loop, clock, before = await x_event_read_ahead_behind_a_batch(ev("acknowledged", "X", NOW + 7 * M))
    result = await loop.step()
    assert result is not None and [e.incident_id for e in result.write.events] == ["Z1", "Z2"]
    assert "X" not in result.write.incidents  # its warning waits for its acknowledgement
    result = await loop.step()
    assert result is not None and [e.incident_id for e in result.write.events] == ["X"]
    clock.now = NOW + 9 * M
    while await loop.step() is not None:
        pass
    await loop.drain()
    assert [s for s in sent(store)[len(before) :] if s[1] == "incident.sla.warning" and s[2] == "ack"] == []
    assert logged(store)[-1] == ("X", "incident.acknowledged")


async def test_a_timer_held_for_a_refused_event_read_ahead_keeps_its_moment_and_fires() -> None:
    """A timer held back for an event still read ahead goes back into the heap as it was: when that
    event is refused (a second report of X: it re-arms nothing), X's warning still fires, in the
    batch that refuses it (found in review: put back at the wall clock instead, a partition behind
    a backlog never reached it)."""
    # refused: X is open already
    store, loop, _, _ = await x_event_read_ahead_behind_a_batch(
        ev("reported", "X", NOW + 7 * M, severity="low", region="uk")
    )
    wake = (NOW + 7 * M + 30 * S).timestamp()  # X's warning moment, as X's report armed it
    result = await loop.step()
    assert result is not None and [e.incident_id for e in result.write.events] == ["Z1", "Z2"]
    assert "X" not in result.write.incidents and loop.timers._wake["X"] == wake  # held, as it was
    result = await loop.step()
    assert result is not None and result.write.events == []  # the second report is refused ...
    assert "X" in result.write.incidents  # ... and X's warning fires after it
    await loop.drain()
    assert sent(store).count(("X", "incident.sla.warning", "ack")) == 1


async def test_input_is_read_ahead_even_when_no_more_batches_may_be_decided_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With as many batches under way as may be (`commit_depth` + `_AHEAD`), a waiting batch fires
    nothing more meanwhile, but it still reads the input that arrives: its partitions stay caught up,
    and the timers fire as soon as there is room."""
    from incident_engine.entrypoints import consumer as consumer_module

    store, consumer, loop, clock = await x_reported_then_slow_reads()
    monkeypatch.setattr(consumer_module, "_AHEAD", -loop.commit_depth)  # no room at all meanwhile
    consumer.publish(0, ev("reported", "Y", NOW + M, severity="critical", region="au"))
    step = asyncio.create_task(loop.step())
    await settle(step, lambda: store.reads == 2)
    consumer.publish(0, ev("reported", "Z", NOW + 2 * M, severity="low", region="uk"))
    clock.now = NOW + 8 * M
    await settle(step, lambda: [r.key for r in loop._ahead] == [b"Z"])
    assert loop.caught_up == {0}
    warned = ("X", "incident.sla.warning", "ack")
    for _ in range(10):
        await asyncio.sleep(0.005)  # the timers had their turns
    assert warned not in sent(store)  # no room: nothing fired meanwhile
    store.answer.set()
    assert await step is not None
    while await loop.step() is not None:
        pass
    await loop.drain()
    assert sent(store).count(warned) == 1
    assert [i for i, _ in logged(store)] == ["X", "Y", "Z"]


async def test_what_was_read_ahead_is_read_again_after_a_failed_batch() -> None:
    """A batch that fails drops what was read ahead with it: the partitions are read again from the
    offsets in Postgres, and every event is logged once."""
    store, consumer, loop, _ = await x_reported_then_slow_reads()
    consumer.publish(0, ev("reported", "Y", NOW + M, severity="critical", region="au"))
    step = asyncio.create_task(loop.step())
    await settle(step, lambda: store.reads == 2)
    consumer.publish(0, ev("acknowledged", "X", NOW + 2 * M), ev("reported", "Z", NOW + 2 * M, severity="low",
                                                                 region="uk"))  # fmt: skip
    await settle(step, lambda: len(loop._ahead) == 2)

    store.fail = ConnectionError("Postgres went away")
    store.answer.set()
    with pytest.raises(ConnectionError):
        await step  # the read it waited for failed
    store.fail = None
    await loop._reset()
    assert loop._ahead == []
    while await loop.step() is not None:
        pass
    await loop.drain()
    assert logged(store) == [("X", "incident.reported"), ("Y", "incident.reported"),
                             ("X", "incident.acknowledged"), ("Z", "incident.reported")]  # fmt: skip


async def test_what_was_read_ahead_of_a_revoked_partition_is_dropped() -> None:
    """A rebalance that takes a partition drops what was read ahead of it (its new owner reads it from
    the stored offsets); what was read of the partitions kept stays for the next step."""
    store, consumer, loop, _ = await x_reported_then_slow_reads()
    loop.assigned = {0, 1}
    await loop._take([1])
    consumer.publish(0, ev("reported", "Y", NOW + M, severity="critical", region="au"))
    step = asyncio.create_task(loop.step())
    await settle(step, lambda: store.reads == 2)
    consumer.publish(0, ev("reported", "Z", NOW + 2 * M, severity="low", region="uk"))
    consumer.publish(1, ev("reported", "W", NOW + 2 * M, severity="low", region="uk"))
    await settle(step, lambda: len(loop._ahead) == 2)
    store.answer.set()
    assert await step is not None
    await loop.on_partitions_revoked({TopicPartition(TOPIC_EVENTS, 1)})
    assert [r.key for r in loop._ahead] == [b"Z"] and loop._ahead_subjects == {"Z"}
    while await loop.step() is not None:
        pass
    await loop.drain()
    assert ("W", "incident.reported") not in logged(store) and ("Z", "incident.reported") in logged(store)


class RebalancingConsumer(ScriptedConsumer):
    """A ScriptedConsumer whose getmany first goes through aiokafka's own `Fetcher.fetched_records`
    (with nothing buffered): during a reassignment it waits for the new assignment, as aiokafka does."""

    def __init__(self, subscription: SubscriptionState) -> None:
        super().__init__(per_fetch=10)
        self._subscription = subscription  # as AIOKafkaConsumer names it
        self.fetcher = types.SimpleNamespace(_subscriptions=subscription, _records={})

    async def getmany(
        self, timeout_ms: int = 0, max_records: int = 500
    ) -> dict[TopicPartition, list[Record]]:
        with self._subscription.fetch_context():  # as AIOKafkaConsumer.getmany
            await Fetcher.fetched_records(self.fetcher, (), 0, max_records)  # type: ignore[arg-type]
            return await super().getmany(timeout_ms, max_records)


async def test_a_rebalance_while_a_batch_waits_does_not_deadlock_the_read_ahead() -> None:
    """aiokafka's coordinator revokes the partitions (its `_on_join_prepare`, whose callback waits for
    the batch lock) while a batch waits for its read and holds that lock: a getmany, even without a
    timeout, then waits for the new assignment, which waits for the revocation. Reading ahead must
    not wait for it (found in review: the first version hung the replica and the group's rebalance)."""
    subscription = SubscriptionState()
    store = SlowReads()
    consumer = RebalancingConsumer(subscription)
    consumer.publish(0, ev("reported", "X", NOW, severity="critical", region="au"))
    loop = await loop_with(store, consumer, Clock(NOW + M))

    class Listener(ConsumerRebalanceListener):  # as FastStream hands the EngineLoop's on
        async def on_partitions_revoked(self, revoked):  # type: ignore[no-untyped-def]
            await loop.on_partitions_revoked(revoked)

        async def on_partitions_assigned(self, assigned):  # type: ignore[no-untyped-def]
            await loop.on_partitions_assigned(assigned)

    partition = TopicPartition(TOPIC_EVENTS, 0)
    subscription.subscribe({TOPIC_EVENTS}, listener=Listener())
    subscription.assign_from_subscribed({partition})
    assert await loop.step() is not None
    await loop.drain()
    store.answer.clear()
    consumer.publish(0, ev("reported", "Y", NOW + M, severity="critical", region="au"))
    step = asyncio.create_task(loop.step())
    await settle(step, lambda: store.reads == 2)
    coordinator = types.SimpleNamespace(
        _subscription=subscription, group_id="g", _group_subscription=None,
        _maybe_do_last_autocommit=lambda _: asyncio.sleep(0),
    )  # fmt: skip
    revoking = asyncio.create_task(
        GroupCoordinator._on_join_prepare(coordinator, types.SimpleNamespace(tps={partition}))  # type: ignore[arg-type]
    )
    await asyncio.sleep(0.05)
    store.answer.set()
    done, _ = await asyncio.wait([step, revoking], timeout=3)
    for task in (step, revoking):
        task.cancel()
    assert step in done and revoking in done
    assert loop.assigned == set()
    # and no fetch was cancelled midway: aiokafka counts the fetches under way, and a count left
    # above zero switches off its max-poll-interval check for good (found in review)
    assert subscription._fetch_count == 0


async def test_the_consumer_still_tells_a_rebalance_under_way() -> None:
    """`EngineLoop._reassigning` reads aiokafka's own state (not public API): a real consumer has it."""
    consumer = AIOKafkaConsumer(TOPIC_EVENTS, bootstrap_servers="127.0.0.1:9")  # never started
    try:
        loop = EngineLoop(BatchProcessor(SlaDomain(PolicyRegistry.load()), MemoryStore(), "g"), MemoryStore())
        loop.consumer = consumer
        assert loop._reassigning() is True  # subscribed, nothing assigned yet
        consumer._subscription.assign_from_subscribed({TopicPartition(TOPIC_EVENTS, 0)})
        assert loop._reassigning() is False
        consumer._subscription.begin_reassignment()  # as the group coordinator does on a rebalance
        assert loop._reassigning() is True
    finally:
        await consumer.stop()


async def test_what_was_read_ahead_is_not_kept_across_a_rebalance_its_fetch_waited_for() -> None:
    """The step that decides what was read ahead tops it up with a fetch first, which may wait out a
    whole rebalance: the records are taken only after it, so the revocation drops them (they are
    read again from the stored offsets), and nothing is decided twice (found in review)."""
    subscription = SubscriptionState()
    store = SlowReads()
    consumer = RebalancingConsumer(subscription)
    consumer.publish(0, ev("reported", "X", NOW, severity="critical", region="au"))
    loop = await loop_with(store, consumer, Clock(NOW + M))
    partition = TopicPartition(TOPIC_EVENTS, 0)
    subscription.subscribe({TOPIC_EVENTS})  # the listener is called by hand below
    subscription.assign_from_subscribed({partition})
    assert await loop.step() is not None
    await loop.drain()
    store.answer.clear()
    consumer.publish(0, ev("reported", "Y", NOW + M, severity="critical", region="au"))  # offset 1
    step = asyncio.create_task(loop.step())
    await settle(step, lambda: store.reads == 2)
    consumer.log[0].append(Record(2, b"not json", b"Q", 0))  # a dead letter
    consumer.publish(0, ev("acknowledged", "Q", NOW + M))  # an unknown incident's: rejected
    await settle(step, lambda: len(loop._ahead) == 2)
    store.answer.set()
    assert await step is not None
    await loop.drain()
    consumer.per_fetch = 1
    subscription.begin_reassignment()  # a rebalance starts; the next step's fetch waits for it
    step = asyncio.create_task(loop.step())
    await asyncio.sleep(0.01)
    await loop.on_partitions_revoked({partition})
    subscription.assign_from_subscribed({partition})
    await loop.on_partitions_assigned({partition})  # the same partition again: from offset 2
    await step
    consumer.per_fetch = 10
    while await loop.step() is not None:
        pass
    await loop.drain()
    assert store.offsets[("g", TOPIC_EVENTS, 0)] == 4
    rejections = [orjson.loads(row.payload)["type"] for row in store.outbox]
    assert rejections.count("incident.rejected") == 2  # the dead letter and the refusal, once each


async def reported_then_forgotten(
    prefix: str, count: int, apart: timedelta
) -> tuple[MemoryStore, EngineLoop, Clock]:
    """`count` critical incidents reported `apart` from NOW on (ids `prefix` + two digits), their
    timers armed, and the cache then emptied (as after a restart)."""
    store = MemoryStore()
    consumer = ScriptedConsumer(per_fetch=100)
    reports = [ev("reported", f"{prefix}{k:02}", NOW + k * apart, severity="critical", region="au")
               for k in range(count)]  # fmt: skip
    consumer.publish(0, *reports)
    clock = Clock(NOW + count * apart)
    loop = await loop_with(store, consumer, clock)
    assert await loop.step() is not None
    await loop.drain()
    loop.processor.cache.forget()
    return store, loop, clock


async def test_prefetch_caches_the_incidents_whose_timers_come_due_soon() -> None:
    store, loop, clock = await reported_then_forgotten("P-", 6, M)
    clock.now = NOW + 7 * M + 45 * S  # P-00's first warning (7.5 min) due in 15 s
    loop.prefetch_ahead = timedelta(seconds=20)
    assert await loop.prefetch() == 1
    assert list(loop.processor.cache.items) == ["P-00"]
    loop.prefetch_ahead = 3 * M + timedelta(seconds=20)  # P-00 to P-03 come due within that
    assert await loop.prefetch() == 3  # P-00 is cached already
    assert sorted(loop.processor.cache.items) == ["P-00", "P-01", "P-02", "P-03"]
    assert loop.processor.cache.get("P-01") == Incident.from_json(store.incidents["P-01"])


async def test_a_prefetch_never_caches_a_state_a_batch_changed_meanwhile() -> None:
    store = SlowReads()
    processor = BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "g")
    feed = Feed()
    reports = [feed(ev("reported", i, NOW, severity="critical", region="au")) for i in ("X", "Z")]
    await processor.process(reports, [], NOW + M)
    processor.cache.forget()
    store.prefetched.clear()
    prefetch = asyncio.create_task(processor.prefetch(["X", "Z"]))
    await asyncio.sleep(0)  # it has read X and Z as they were (seq 1), and waits to answer
    await processor.process([feed(ev("acknowledged", "X", NOW + 2 * M))], [], NOW + 2 * M)  # reads X itself
    assert processor.cache.get("X") is not None
    processor.cache.forget(["X"])  # even once it has left the cache again
    store.prefetched.set()
    assert await prefetch == 1  # Z only: X was changed by a batch while it was read
    assert processor.cache.get("X") is None and processor.cache.get("Z") is not None
    # and a prefetch that spans an emptied cache (a failed batch, a rebalance) caches nothing
    processor.cache.forget()
    store.prefetched.clear()
    prefetch = asyncio.create_task(processor.prefetch(["X", "Z"]))
    await asyncio.sleep(0)
    processor.abandon()
    store.prefetched.set()
    assert await prefetch == 0 and processor.cache.items == {}


def test_upcoming_walks_only_the_top_of_the_heap() -> None:
    rng = random.Random(7)
    heap = TimerHeap()
    base = datetime(2026, 3, 2, tzinfo=UTC)
    wakes = {f"I-{n}": base + timedelta(seconds=rng.uniform(0, 1000)) for n in range(5000)}
    for incident_id, wake in wakes.items():
        heap.arm(incident_id, int(incident_id[2:]) % 3, wake)
    for incident_id in list(wakes)[:500]:  # re-armed later: their old entries are stale
        wakes[incident_id] += timedelta(seconds=2000)
        heap.arm(incident_id, int(incident_id[2:]) % 3, wakes[incident_id])
    before = base + timedelta(seconds=100)
    expected = {i for i, w in wakes.items() if w < before}
    found = heap.upcoming([0, 1, 2], before.timestamp(), limit=10_000)
    assert len(found) == len(set(found)) and set(found) == expected
    assert set(heap.upcoming([1], before.timestamp(), 10_000)) == {i for i in expected if int(i[2:]) % 3 == 1}
    first = heap.upcoming([0, 1, 2], before.timestamp(), limit=20)
    assert first == sorted(expected, key=wakes.__getitem__)[:20]  # the earliest, in order
    skipped = set(first[::2])
    assert (
        heap.upcoming([0, 1, 2], before.timestamp(), 10, skip=skipped.__contains__)
        == [i for i in sorted(expected, key=wakes.__getitem__) if i not in skipped][:10]
    )  # passed over, not counted
    assert len(heap) == 5000  # nothing taken


class PermitStore(MemoryStore):
    """Each commit, once the one before it landed, needs a permit (a Postgres round trip)."""

    def __init__(self) -> None:
        super().__init__()
        self.permits = asyncio.Semaphore(10_000)

    async def commit(self, batch, after=None):  # type: ignore[no-untyped-def]
        async def previous_then_permit() -> None:
            if after is not None:
                await after
            await self.permits.acquire()

        await super().commit(batch, after=previous_then_permit())


async def test_timers_firing_meanwhile_do_not_starve_a_decided_batch() -> None:
    """A batch waiting for room among the commits under way counts only those decided before it: the
    timer batches chained meanwhile (after it) would otherwise keep it waiting, and hold the
    partition lock a rebalance needs, for as long as timers come due (found in review)."""
    store = PermitStore()
    consumer = ScriptedConsumer(per_fetch=100)
    reports = [ev("reported", f"I{k}", NOW + k * S, severity="critical", region="au") for k in range(40)]
    consumer.publish(0, ev("reported", "X", NOW, severity="critical", region="au"), *reports)
    clock = Clock(NOW + 40 * S)
    processor = BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "g")
    loop = EngineLoop(processor, store, clock=clock, batch_timeout_ms=20, commit_depth=2)
    loop.consumer = consumer  # type: ignore[assignment]
    loop.assigned = {0}
    await loop._take([0])
    assert await loop.step() is not None
    await loop.drain()  # all cached (reported here); I_k's first warning at 7.5 min + k s
    store.permits = asyncio.Semaphore(0)  # Postgres lands one commit per permit from now on
    for kind in ("acknowledged", "investigating"):
        consumer.publish(0, ev(kind, "X", clock.now))
        assert await loop.step() is not None  # 1, then 2 commits under way
    consumer.publish(0, ev("restored", "X", clock.now))
    step = asyncio.create_task(loop.step())  # decided, then waits for room
    await asyncio.sleep(0.03)
    assert not step.done()
    for k in range(30):
        clock.now = NOW + 7 * M + 30 * S + k * S + S / 1000  # I_k's 50 % warning comes due
        await asyncio.sleep(0.03)  # a timer batch is chained meanwhile
        store.permits.release()  # one commit lands
        await asyncio.sleep(0.005)
        if step.done():
            break
    assert step.done() and k <= 1  # once the acknowledgement's commit landed: not behind the timers
    result = await step
    assert result is not None and [e.type for e in result.write.events] == ["incident.restored"]
    for _ in range(100):
        store.permits.release()
    await loop.drain()
    assert ("X", "incident.state.changed", None) in sent(store)
    assert sum(1 for e in store.log.values() if e["incident_id"] == "X") == 4


async def test_prefetch_goes_on_past_its_limit_earliest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """More incidents due soon than one prefetch reads: each reads the earliest not cached yet (the
    first version walked the heap in no order and counted cached ones: found in review)."""
    from incident_engine.entrypoints import consumer as consumer_module

    monkeypatch.setattr(consumer_module, "_PREFETCH_MAX", 20)
    _, loop, clock = await reported_then_forgotten("I", 50, S)
    clock.now = NOW + 7 * M + 29 * S  # I00's first warning due in 1 s, I49's in 50 s
    loop.prefetch_ahead = 2 * M
    assert await loop.prefetch() == 20
    assert sorted(loop.processor.cache.items) == [f"I{k:02}" for k in range(20)]  # the 20 due first
    assert await loop.prefetch() == 20
    assert await loop.prefetch() == 10
    assert await loop.prefetch() == 0
    assert len(loop.processor.cache.items) == 50

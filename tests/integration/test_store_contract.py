"""One contract suite for the event store, run against PostgreSQL and against its in-memory twin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from devstack.stack import Service, fresh_database
from incident_engine.adapters.memory import MemoryStore
from incident_engine.adapters.postgres.migrate import migrate
from incident_engine.adapters.postgres.store import PostgresStore, create_pool
from incident_engine.adapters.store import (
    BatchWrite,
    EventStore,
    LoggedEvent,
    OffsetConflict,
    OutboxRow,
    TimerRow,
)
from incident_engine.domain import Incident

pytestmark = pytest.mark.integration

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[EventStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    postgres: Service = request.getfixturevalue("postgres")
    dsn = await fresh_database(postgres.url)
    await migrate(dsn)
    pool = await create_pool(dsn)
    try:
        yield PostgresStore(pool)
    finally:
        await pool.close()


def incident(incident_id: str, seq: int = 1) -> Incident:
    return Incident(incident_id, "reported", "livepro-1", "high", "uk", T0, T0, seq=seq)


def logged(incident_id: str, seq: int, event_id: str, offset: int, source: str = "/t") -> LoggedEvent:
    envelope = {"id": event_id, "source": source, "subject": incident_id, "type": "incident.reported"}
    return LoggedEvent(
        incident_id, seq, event_id, "incident.reported", source, T0, T0, 0, offset, orjson.dumps(envelope)
    )


def batch(offset_from: int, offset_to: int, **parts: object) -> BatchWrite:
    write = BatchWrite("g", offsets={("incidents.events", 0): (offset_from, offset_to)})
    for name, value in parts.items():
        setattr(write, name, value)
    return write


async def test_a_committed_batch_reads_back(store: EventStore) -> None:
    outputs = [
        OutboxRow(
            0, "incidents.state", b"A", f"out-{i}", b'{"n": %d}' % i, {"traceparent": "x"} if i else None
        )
        for i in range(3)
    ]
    await store.commit(batch(
        0, 2,
        events=[logged("A", 1, "e1", 0), logged("B", 1, "e2", 1)],
        incidents={"A": (incident("A"), 0), "B": (incident("B"), 0)}, created={"A", "B"},
        timers={"A": TimerRow("A", 0, T0 + timedelta(minutes=5), {"traceparent": "t"}), "B": None},
        outbox=outputs,
        firings={("A", T0): (0, T0 - timedelta(microseconds=1), T0 - timedelta(seconds=5))},
    ))  # fmt: skip
    assert await store.committed_offsets("g", "incidents.events", [0, 1]) == {0: 2}
    assert await store.known_event_ids([("/t", "e1"), ("/t", "e2"), ("/t", "e3")]) == {
        ("/t", "e1"),
        ("/t", "e2"),
    }
    loaded = await store.load_incidents(["A", "Z"])
    assert list(loaded) == ["A"] and loaded["A"].to_json() == incident("A").to_json()
    timers = await store.load_timers([0])
    assert [(t.incident_id, t.due_at, t.trace_context) for t in timers] == [
        ("A", T0 + timedelta(minutes=5), {"traceparent": "t"})
    ]
    pending = await store.pending_outbox([0], 10)
    assert [(o.event_id, o.payload, o.headers) for o in pending] == [
        (o.event_id, o.payload, o.headers) for o in outputs
    ]
    assert await store.outbox_backlog() == 3
    await store.mark_sent([o.id for o in pending])
    assert await store.pending_outbox([0], 10) == [] and await store.outbox_backlog() == 0
    assert [(r["incident_id"], r["seq"]) for r in await store.read_log()] == [("A", 1), ("B", 1)]
    assert (await store.read_log("B"))[0]["envelope"]["id"] == "e2"
    assert await store.read_firings() == [
        ("A", T0, T0 - timedelta(microseconds=1), T0 - timedelta(seconds=5))
    ]


async def test_each_event_keeps_its_own_processing_moment(store: EventStore) -> None:
    # PostgreSQL is sent a batch's shared moment once (the first event's), and only the others per row.
    first, second, third = logged("A", 1, "e1", 0), logged("A", 2, "e2", 1), logged("B", 1, "e3", 2)
    second.processed_at = T0 + timedelta(microseconds=1)
    third.processed_at = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)  # equal to the first, not the same object
    await store.commit(batch(0, 3, events=[first, second, third]))
    assert [(r["event_id"], r["processed_at"]) for r in await store.read_log()] == [
        ("e1", T0),
        ("e2", T0 + timedelta(microseconds=1)),
        ("e3", T0),
    ]


async def test_a_fenced_batch_writes_nothing(store: EventStore) -> None:
    await store.commit(
        batch(0, 5, events=[logged("A", 1, "e1", 0)], incidents={"A": (incident("A"), 0)}, created={"A"})
    )
    with pytest.raises(OffsetConflict):  # a zombie that still thinks offset 3 is next
        await store.commit(
            batch(3, 4, events=[logged("A", 2, "e9", 3)], incidents={"A": (incident("A", 2), 0)})
        )
    assert await store.known_event_ids([("/t", "e9")]) == set()
    assert (await store.load_incidents(["A"]))["A"].seq == 1
    assert await store.committed_offsets("g", "incidents.events", [0]) == {0: 5}


async def test_a_batch_that_fails_half_way_writes_nothing(store: EventStore) -> None:
    await store.commit(batch(0, 1, events=[logged("A", 1, "e1", 0)]))
    with pytest.raises(Exception):  # noqa: B017 - the twin and Postgres raise their own conflict errors
        await store.commit(batch(1, 3, events=[logged("B", 1, "e2", 1), logged("A", 1, "e3", 2)],
                                 outbox=[OutboxRow(0, "incidents.state", b"B", "o", b"{}")]))  # fmt: skip
    assert await store.known_event_ids([("/t", "e2"), ("/t", "e3")]) == set()
    assert await store.outbox_backlog() == 0
    assert await store.committed_offsets("g", "incidents.events", [0]) == {0: 1}


async def test_incidents_are_created_once_and_only_existing_ones_change(store: EventStore) -> None:
    await store.commit(batch(0, 1, incidents={"A": (incident("A"), 0)}, created={"A"}))
    await store.commit(batch(1, 2, incidents={"A": (incident("A", 2), 0)}))  # an update
    assert (await store.load_incidents(["A"]))["A"].seq == 2
    with pytest.raises(Exception):  # noqa: B017 - reported twice: the twin and Postgres raise their own
        await store.commit(batch(2, 3, incidents={"A": (incident("A", 3), 0)}, created={"A"}))
    with pytest.raises(Exception):  # noqa: B017 - a change to an incident that was never stored
        await store.commit(batch(2, 3, incidents={"Z": (incident("Z", 2), 0)}))
    assert (await store.load_incidents(["A", "Z"])).keys() == {"A"}
    assert (await store.load_incidents(["A"]))["A"].seq == 2
    assert await store.committed_offsets("g", "incidents.events", [0]) == {0: 2}


async def test_lookup_is_known_ids_and_stored_incidents_at_once(store: EventStore) -> None:
    await store.commit(
        batch(0, 1, events=[logged("A", 1, "e1", 0)], incidents={"A": (incident("A"), 0)}, created={"A"})
    )
    known, loaded = await store.lookup([("/t", "e1"), ("/t", "e2"), ("/other", "e1")], ["A", "B"])
    assert known == {("/t", "e1")}
    assert list(loaded) == ["A"] and loaded["A"].to_json() == incident("A").to_json()
    assert await store.lookup([], []) == (set(), {})


async def test_events_are_identified_by_source_and_id(store: EventStore) -> None:
    """CloudEvents identity: two channels may both send an event `1`; both are logged, each once."""
    await store.commit(batch(0, 1, events=[logged("A", 1, "1", 0, "/channels/phone/au")]))
    await store.commit(batch(1, 2, events=[logged("B", 1, "1", 1, "/channels/email")]))
    assert await store.known_event_ids([("/channels/phone/au", "1"), ("/channels/email", "1")]) == {
        ("/channels/phone/au", "1"),
        ("/channels/email", "1"),
    }
    assert await store.known_event_ids([("/channels/monitor", "1")]) == set()
    assert [(r["source"], r["event_id"]) for r in await store.read_log()] == [
        ("/channels/phone/au", "1"),
        ("/channels/email", "1"),
    ]
    # The same (source, id) again, under another incident: a conflict (the engine redoes the batch
    # from the stored offsets, looking every event up), nothing of the batch written.
    with pytest.raises(OffsetConflict, match="event /channels/email 1 is in the event log already"):
        await store.commit(batch(2, 3, events=[logged("C", 1, "1", 2, "/channels/email")],
                                 incidents={"C": (incident("C"), 0)}, created={"C"}))  # fmt: skip
    assert await store.committed_offsets("g", "incidents.events", [0]) == {0: 2}
    assert await store.load_incidents(["C"]) == {}


def timer_only(seq: int, epoch: int | None, decided_from: int | None = None) -> BatchWrite:
    """What a replica writes when an incident's ack timer fires: no input records, so no offsets."""
    write = BatchWrite(
        "g",
        incidents={"A": (incident("A", seq), 0)},
        timers={"A": None},
        firings={
            ("A", T0 + timedelta(minutes=15)): (0, T0 + timedelta(minutes=15), T0 + timedelta(minutes=15))
        },
        outbox=[OutboxRow(0, "incidents.breaches", b"A", f"breach-{epoch}", b"{}")],
    )
    if epoch is not None:
        write.epochs = {0: epoch}
    if decided_from is not None:
        write.decided_from = {"A": decided_from}
    return write


async def test_claims_bump_the_epoch_of_each_partition(store: EventStore) -> None:
    assert await store.claim("g", "incidents.events", [0, 1]) == {0: 1, 1: 1}
    assert await store.claim("g", "incidents.events", [1]) == {1: 2}
    assert await store.claim("other", "incidents.events", [1]) == {1: 1}  # per consumer group
    assert await store.epochs("g", "incidents.events", [0, 1, 2]) == {0: 1, 1: 2}


async def test_a_stale_epoch_refuses_a_timer_only_batch(store: EventStore) -> None:
    due = T0 + timedelta(minutes=15)
    await store.commit(batch(0, 1, incidents={"A": (incident("A"), 0)}, created={"A"},
                             timers={"A": TimerRow("A", 0, due)}))  # fmt: skip
    (zombie,) = (await store.claim("g", "incidents.events", [0])).values()
    (owner,) = (await store.claim("g", "incidents.events", [0])).values()  # the partition moved on
    assert owner > zombie
    with pytest.raises(OffsetConflict):  # no offsets to check: only the epoch catches the zombie
        await store.commit(timer_only(1, zombie, decided_from=1))
    with pytest.raises(OffsetConflict):  # a writer without an epoch owns no claimed partition
        await store.commit(timer_only(1, None, decided_from=1))
    assert await store.outbox_backlog() == 0 and await store.read_firings() == []
    assert await store.timer_rows() == {"A": due}
    await store.commit(timer_only(1, owner, decided_from=1))  # the owner's firing lands
    assert await store.outbox_backlog() == 1 and await store.timer_rows() == {}
    assert await store.read_firings() == [("A", due, due, due)]


async def test_a_projection_update_is_conditional_on_the_seq_it_was_decided_from(store: EventStore) -> None:
    (epoch,) = (await store.claim("g", "incidents.events", [0])).values()
    await store.commit(batch(0, 1, incidents={"A": (incident("A"), 0)}, created={"A"}, epochs={0: epoch}))
    await store.commit(
        batch(1, 2, incidents={"A": (incident("A", 2), 0)}, decided_from={"A": 1}, epochs={0: epoch})
    )
    with pytest.raises(OffsetConflict):  # decided from seq 1, but the incident moved on to 2
        await store.commit(timer_only(1, epoch, decided_from=1))
    assert (await store.load_incidents(["A"]))["A"].seq == 2  # not rolled back
    assert await store.read_firings() == [] and await store.outbox_backlog() == 0
    await store.commit(timer_only(2, epoch, decided_from=2))
    assert await store.read_firings() != []


async def test_parked_outputs_are_kept_apart_from_the_outbox(store: EventStore) -> None:
    row = OutboxRow(3, "incidents.rejected", b"A", "out-1", b"x" * 100, {"traceparent": "t"})
    await store.park(row, "MessageSizeTooLargeError: [Error 10]")
    assert await store.pending_outbox([3], 10) == [] and await store.outbox_backlog() == 0
    ((parked, error),) = await store.parked_outputs()
    assert (parked.partition, parked.topic, parked.key, parked.event_id, parked.payload, parked.headers) == (
        3, "incidents.rejected", b"A", "out-1", b"x" * 100, {"traceparent": "t"}
    )  # fmt: skip
    assert error.startswith("MessageSizeTooLargeError")
    await store.unpark([parked.id])
    assert await store.parked_outputs() == []


async def test_a_chained_commit_takes_its_rows_at_once_and_writes_after_the_previous(
    store: EventStore,
) -> None:
    """`after`: the rows are read when the commit is called (the loop then changes the cached
    incidents in place for the next batch), written once the previous commit is done."""
    first = asyncio.get_running_loop().create_future()
    inc = incident("A")
    chained = asyncio.create_task(
        store.commit(
            batch(0, 1, events=[logged("A", 1, "e1", 0)], incidents={"A": (inc, 0)}, created={"A"}),
            after=first,
        )
    )
    await asyncio.sleep(0.05)
    inc.state, inc.seq = "acknowledged", 2  # the next batch, decided meanwhile, changes it in place
    assert await store.committed_offsets("g", "incidents.events", [0]) == {}  # nothing before `after`
    first.set_result(None)
    await chained
    assert await store.committed_offsets("g", "incidents.events", [0]) == {0: 1}
    loaded = await store.load_incidents(["A"])
    assert (loaded["A"].state, loaded["A"].seq) == ("reported", 1)  # as it was when called


async def test_a_commit_chained_to_a_failed_one_writes_nothing(store: EventStore) -> None:
    first = asyncio.get_running_loop().create_future()
    chained = asyncio.create_task(
        store.commit(
            batch(0, 1, events=[logged("A", 1, "e1", 0)], incidents={"A": (incident("A"), 0)}, created={"A"}),
            after=first,
        )
    )
    await asyncio.sleep(0)
    first.set_exception(OffsetConflict("the previous batch was refused"))
    with pytest.raises(OffsetConflict, match="previous batch"):
        await chained
    assert await store.committed_offsets("g", "incidents.events", [0]) == {}
    assert await store.read_log() == [] and await store.load_incidents(["A"]) == {}


async def test_a_zombie_batch_colliding_with_the_new_owners_rows_is_a_conflict(store: EventStore) -> None:
    """The batch is one statement now: a fenced-off batch whose new incident and event the new owner
    has written since must be refused as a conflict, never fail on a unique key (isolation takes
    that for bad input and would dead-letter the message)."""
    (zombie,) = (await store.claim("g", "incidents.events", [0])).values()
    (owner,) = (await store.claim("g", "incidents.events", [0])).values()
    await store.commit(batch(0, 1, events=[logged("A", 1, "e1", 0)], incidents={"A": (incident("A"), 0)},
                             created={"A"}, epochs={0: owner}))  # fmt: skip
    for epoch, start in ((zombie, 0), (owner, 0)):  # fenced off; or the owner's own stale batch
        with pytest.raises(OffsetConflict):
            await store.commit(
                batch(start, 1, events=[logged("A", 1, "e1", 0)], incidents={"A": (incident("A"), 0)},
                      created={"A"}, epochs={0: epoch}, timers={"A": TimerRow("A", 0, T0)},
                      outbox=[OutboxRow(0, "incidents.state", b"A", "o", b"{}")])
            )  # fmt: skip
        assert await store.timer_rows() == {} and await store.outbox_backlog() == 0
    assert await store.committed_offsets("g", "incidents.events", [0]) == {0: 1}


async def test_a_batch_waits_for_a_claim_in_progress_and_is_refused(postgres: Service) -> None:
    """`held` locks the owner rows FOR SHARE: a batch decided under the old epoch, written while
    another replica's claim is not committed yet, waits for it, then sees the new epoch and writes
    nothing (not under the stale epoch, not half of the batch)."""
    import asyncpg

    from incident_engine.adapters.postgres.store import SQL

    dsn = await fresh_database(postgres.url)
    await migrate(dsn)
    pool = await create_pool(dsn)
    other = await asyncpg.connect(dsn)
    try:
        store = PostgresStore(pool)
        (epoch,) = (await store.claim("g", "incidents.events", [0])).values()
        await store.commit(batch(0, 1, events=[logged("A", 1, "e1", 0)], incidents={"A": (incident("A"), 0)},
                                 created={"A"}, epochs={0: epoch}))  # fmt: skip
        claiming = other.transaction()
        await claiming.start()
        await other.fetch(SQL["claim_partitions"], "g", "incidents.events", [0])
        writing = asyncio.create_task(
            store.commit(
                batch(1, 3, events=[logged("A", 2, "e2", 1), logged("B", 1, "e3", 2)],
                      incidents={"A": (incident("A", 2), 0), "B": (incident("B"), 0)}, created={"B"},
                      decided_from={"A": 1}, epochs={0: epoch}, timers={"B": TimerRow("B", 0, T0)},
                      outbox=[OutboxRow(0, "incidents.state", b"B", "o", b"{}")])
            )
        )  # fmt: skip
        await asyncio.sleep(0.3)
        assert not writing.done()  # waiting for the claim's transaction
        await claiming.commit()
        with pytest.raises(OffsetConflict, match="no longer all current"):
            await writing
        assert await store.committed_offsets("g", "incidents.events", [0]) == {0: 1}
        assert [(r["incident_id"], r["seq"]) for r in await store.read_log()] == [("A", 1)]
        assert (await store.incident_rows()).keys() == {"A"}
        assert (await store.load_incidents(["A"]))["A"].seq == 1
        assert await store.timer_rows() == {} and await store.outbox_backlog() == 0
    finally:
        await other.close()
        await pool.close()


async def test_every_column_of_a_batch_lands_where_it_belongs(postgres: Service) -> None:
    """The rows travel as composite values (migration 0013), several of whose fields are text: a
    field order out of step with the tuples built in `PostgresStore.commit` would write one column's
    value into another without any error. Every column gets a value no other column has."""
    dsn = await fresh_database(postgres.url)
    await migrate(dsn)
    pool = await create_pool(dsn)
    second = timedelta(seconds=1)
    try:
        store = PostgresStore(pool)
        new = Incident("N1", "reported", "livepro-1", "critical", "au", T0, T0 + second, seq=1)
        event = LoggedEvent(
            "N1", 1, "ev-1", "incident.reported", "/src", T0 + 2 * second, T0 + 3 * second, 5, 41,
            b'{"id": "ev-1"}', {"traceparent": "tp-1"},
        )  # fmt: skip
        armed = TimerRow("N1", 5, T0 + timedelta(minutes=15), {"traceparent": "tp-2"})
        await store.commit(batch(40, 42, events=[event], incidents={"N1": (new, 5)}, created={"N1"},
                                 timers={"N1": armed}))  # fmt: skip
        changed = Incident("N1", "acknowledged", "livepro-1", "critical", "au", T0, T0 + 4 * second, seq=2)
        later = T0 + timedelta(hours=4)
        await store.commit(batch(42, 43, incidents={"N1": (changed, 6)}, decided_from={"N1": 1},
                                 timers={"N1": TimerRow("N1", 6, later, None)}))  # fmt: skip
        assert dict(await pool.fetchrow("SELECT * FROM event_log")) == {
            "incident_id": "N1", "seq": 1, "event_id": "ev-1", "type": "incident.reported", "source": "/src",
            "event_time": T0 + 2 * second, "processed_at": T0 + 3 * second, "kafka_partition": 5,
            "kafka_offset": 41, "envelope": {"id": "ev-1"}, "trace_context": {"traceparent": "tp-1"},
        }  # fmt: skip
        assert dict(await pool.fetchrow("SELECT * FROM incidents")) == {
            "incident_id": "N1", "state": "acknowledged", "policy": "livepro-1", "severity": "critical",
            "region": "au", "seq": 2, "kafka_partition": 6, "reported_at": T0, "updated_at": T0 + 4 * second,
            "body": changed.to_json(),
        }  # fmt: skip
        assert dict(await pool.fetchrow("SELECT * FROM timers")) == {
            "incident_id": "N1", "kafka_partition": 6, "due_at": later, "trace_context": None
        }  # fmt: skip
        await store.commit(batch(43, 44, incidents={"N1": (changed, 7)}, decided_from={"N1": 2},
                                 timers={"N1": TimerRow("N1", 7, T0, {"traceparent": "tp-3"})}))  # fmt: skip
        assert dict(await pool.fetchrow("SELECT * FROM timers")) == {
            "incident_id": "N1", "kafka_partition": 7, "due_at": T0, "trace_context": {"traceparent": "tp-3"}
        }  # fmt: skip
    finally:
        await pool.close()

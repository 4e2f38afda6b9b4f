"""The batch processor on the in-memory store: exactly-once, dead letters, fencing, timers, replay."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from incident_contracts import TOPIC_EVENTS, stable_id
from incident_engine.adapters.memory import MemoryStore
from incident_engine.adapters.store import BatchWrite, OffsetConflict
from incident_engine.domain import Incident, PolicyRegistry, SlaDomain
from incident_engine.entrypoints.commands import build_event
from incident_engine.entrypoints.processor import BatchProcessor, IncidentCache
from incident_engine.replay import differences, rebuild

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)  # a Monday, business hours everywhere but au evening


@dataclass
class Record:
    """Stands in for aiokafka's ConsumerRecord."""

    offset: int
    value: bytes | None
    key: bytes | None
    partition: int = 0
    topic: str = TOPIC_EVENTS
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class Feed:
    """Numbered records of one partition."""

    def __init__(self) -> None:
        self.offset = 0

    def __call__(self, body: dict[str, Any] | bytes, key: str | None = "auto") -> Record:
        value = body if isinstance(body, bytes) else orjson.dumps(body)
        if key == "auto":
            key = body["subject"] if isinstance(body, dict) else None
        record = Record(self.offset, value, key.encode() if key else None)
        self.offset += 1
        return record


def ev(kind: str, incident: str, at: datetime, **data: Any) -> dict[str, Any]:
    return build_event(kind, incident, source="/channels/test", time=at, severity=data.pop("severity", None),
                       region=data.pop("region", None), summary=None, extra=data)  # fmt: skip


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def processor(store: MemoryStore) -> BatchProcessor:
    return BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "g", max_message_bytes=4096)


async def test_accepted_events_are_logged_once_with_offsets(
    processor: BatchProcessor, store: MemoryStore
) -> None:
    feed = Feed()
    report = ev("reported", "A", T0, severity="critical", region="uk")
    result = await processor.process([feed(report), feed(report), feed(ev("acknowledged", "A", T0))], [], T0)
    assert [e.seq for e in result.write.events] == [1, 2]
    assert result.outcomes[("incident.reported", "ignored_repeat")] == 1
    assert store.offsets[("g", TOPIC_EVENTS, 0)] == 3
    # the same id again in a later batch: dropped silently, offset still advances
    await processor.process([feed(report)], [], T0 + timedelta(seconds=1))
    assert len(store.log) == 2 and store.offsets[("g", TOPIC_EVENTS, 0)] == 4


async def test_bad_input_is_dead_lettered_with_reason(processor: BatchProcessor, store: MemoryStore) -> None:
    feed = Feed()
    good = ev("reported", "B", T0, severity="low", region="au")
    other_key = ev("reported", "C", T0, severity="low", region="au")
    records = [
        feed(b"\x00\x01 junk", key="B"),
        feed(b'{"x": "' + b"y" * 5000 + b'"}', key="B"),
        feed(other_key, key="not-C"),
        feed(good),
    ]
    result = await processor.process(records, [], T0)
    rejected = [o for o in result.outputs if o.type == "incident.rejected"]
    assert [r.data["reason"] for r in rejected] == ["decode", "decode", "schema"]
    assert "exceeds the limit" in rejected[1].data["detail"]
    assert "differs from subject" in rejected[2].data["detail"]
    assert [e.incident_id for e in result.write.events] == ["B"]
    assert store.offsets[("g", TOPIC_EVENTS, 0)] == 4


async def test_due_timers_fire_once_and_rearm(processor: BatchProcessor, store: MemoryStore) -> None:
    feed = Feed()
    result = await processor.process(
        [feed(ev("reported", "D", T0, severity="critical", region="us"))], [], T0
    )
    first_due = result.next_due["D"][1]
    assert first_due == T0 + timedelta(minutes=7, seconds=30)  # ack 50 % of 15 min, 24x7
    assert store.timers["D"].due_at == first_due
    fired = await processor.process([], [("D", 0)], first_due + timedelta(milliseconds=5))
    assert [(o.type, o.data.get("threshold")) for o in fired.outputs] == [("incident.sla.warning", 0.5)]
    assert fired.fired_lateness == [0.005]
    assert store.timers["D"].due_at > first_due
    fired_at = first_due + timedelta(milliseconds=5)
    horizon = fired_at - timedelta(microseconds=1)  # strictly before the watermark (here: now)
    assert store.firings == {("D", fired_at, horizon, horizon)}  # no grace in this processor


async def test_offset_conflict_voids_the_batch_and_the_cache(
    processor: BatchProcessor, store: MemoryStore
) -> None:
    feed = Feed()
    await processor.process([feed(ev("reported", "E", T0, severity="high", region="uk"))], [], T0)
    store.offsets[("g", TOPIC_EVENTS, 0)] = 50  # another owner moved on
    with pytest.raises(OffsetConflict):
        await processor.process([feed(ev("acknowledged", "E", T0))], [], T0)
    assert len(store.log) == 1
    assert processor.cache.items == {}
    assert store.incidents["E"]["state"] == "reported"


async def test_replay_of_the_log_equals_the_live_state(processor: BatchProcessor, store: MemoryStore) -> None:
    feed = Feed()
    now = T0
    script = [
        ev("reported", "F", T0, severity="critical", region="au"),
        ev("reported", "G", T0, severity="low", region="uk"),
        ev("acknowledged", "G", T0 + timedelta(minutes=5)),
    ]
    await processor.process([feed(e) for e in script], [], now)
    for minutes in (8, 13, 16, 31):  # timers of F fire along the way
        now = T0 + timedelta(minutes=minutes)
        await processor.process([], [("F", 0)], now)
    late = ev("acknowledged", "F", T0 + timedelta(minutes=1))  # happened long ago, arrives now
    await processor.process([feed(late), feed(ev("updated", "G", now, note="n"))], [], now)
    rebuilt = rebuild(processor.domain, await store.read_log(), await store.read_firings())
    assert differences(rebuilt.incidents, await store.incident_rows(), await store.timer_rows()) == []
    # The ack happened at 00:01, before the breach went out at 00:16: the clock was met, and the
    # breach is retracted (live and on replay alike).
    assert rebuilt.incidents["F"].clocks["ack"].status == "met"
    retractions = [o for o in store.outbox if b"incident.sla.retracted" in o.payload]
    assert len(retractions) == 1


async def test_root_events_are_traced_at_the_configured_ratio_once(store: MemoryStore) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from incident_engine.adapters.telemetry import create_telemetry

    exporter = InMemorySpanExporter()
    telemetry = create_telemetry("test", span_exporters=[exporter])
    processor = BatchProcessor(
        SlaDomain(PolicyRegistry.load()), store, "g", tracer=telemetry.tracer, root_sample_ratio=0.1
    )
    feed = Feed()
    events = [feed(ev("reported", f"R{i}", T0, severity="low", region="uk")) for i in range(3000)]
    await processor.process(events, [], T0)
    telemetry.tracer_provider.force_flush()
    spans = [s for s in exporter.get_finished_spans() if s.name == "incidents.events process"]
    telemetry.shutdown()
    assert 200 <= len(spans) <= 400, len(spans)  # 10 % of 3000, not 1 % (sampled twice)


async def test_an_incident_in_two_pipelined_batches_stays_cached_until_both_commit(
    processor: BatchProcessor, store: MemoryStore
) -> None:
    """Batch K changes an incident, batch K+1 (decided while K commits) restores it. When K commits,
    K+1 still holds the incident: a timer popped before K+1 commits must fire on the restored state,
    never on the state K committed (that fired a false breach and rolled the projection back)."""
    feed = Feed()
    await processor.process([feed(ev("reported", "R", T0, severity="critical", region="uk"))], [], T0)
    now = T0 + timedelta(hours=1)
    # As in Postgres, a commit serializes its rows when it starts, and finishes later.
    gate, commit = asyncio.Event(), store.commit

    async def held_commit(batch: BatchWrite, after: Awaitable[object] | None = None) -> None:
        rows = {i: (inc.copy(), p) for i, (inc, p) in batch.incidents.items()}
        await gate.wait()
        await commit(dataclasses.replace(batch, incidents=rows), after=after)

    store.commit = held_commit  # type: ignore[method-assign]
    first = await processor.decide([feed(ev("investigating", "R", T0 + timedelta(minutes=5)))], [], now)
    committing = asyncio.create_task(processor.commit(first))
    await asyncio.sleep(0)  # batch K's rows are serialized; it waits for Postgres
    second = await processor.decide([feed(ev("restored", "R", T0 + timedelta(minutes=30)))], [], now)
    gate.set()
    await committing
    store.commit = commit  # type: ignore[method-assign]
    timer = await processor.decide([], [("R", 0)], now)  # the heap still held K's next timer
    assert [o.type for o in timer.outputs] == []  # restored at the due moment: in time, nothing due
    assert "R" not in timer.write.incidents
    await processor.commit(second)
    await processor.commit(timer)
    assert store.incidents["R"]["state"] == "restored"
    assert store.incidents["R"]["seq"] == 3


async def test_armed_traces_go_with_restored_incidents(processor: BatchProcessor) -> None:
    """The trace that armed an incident's timers is kept only while the incident can still fire."""
    feed = Feed()
    parent = [("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]
    for name in ("TR1", "TR2"):
        record = feed(ev("reported", name, T0, severity="critical", region="uk"))
        record.headers = parent
        await processor.process([record], [], T0)
    assert set(processor.armed_traces) == {"TR1", "TR2"}
    restored = feed(ev("restored", "TR1", T0 + timedelta(minutes=1)))
    restored.headers = parent
    await processor.process([restored], [], T0 + timedelta(minutes=1))
    assert set(processor.armed_traces) == {"TR2"}  # TR1 is restored: nothing of it fires any more


# -- hardening: what cannot be stored or reasoned about is a `schema` dead letter, never a stuck batch --


def rejections(result: Any) -> list[tuple[str, str]]:
    return [(o.data["reason"], o.data["detail"]) for o in result.outputs if o.type == "incident.rejected"]


def assert_flows_on(result: Any, store: MemoryStore, applied: list[str], offsets: int) -> None:
    """The good events were applied, and the partition moved past every record of the batch."""
    assert [e.incident_id for e in result.write.events] == applied
    assert store.offsets[("g", TOPIC_EVENTS, 0)] == offsets


async def test_a_nul_in_the_subject_is_a_schema_dead_letter(
    processor: BatchProcessor, store: MemoryStore
) -> None:
    feed = Feed()
    bad = ev("reported", "INC-7", T0, severity="critical", region="uk") | {"subject": "INC-7\u0000x"}
    result = await processor.process(
        [feed(bad), feed(ev("reported", "OK", T0, severity="low", region="uk"))], [], T0
    )
    [(reason, detail)] = rejections(result)
    assert reason == "schema" and detail.startswith("subject: ") and "U+0000" in detail
    assert_flows_on(result, store, ["OK"], 2)
    assert "INC-7\u0000x" not in store.incidents


@pytest.mark.parametrize(
    ("time", "why"),
    [
        ("9999-12-31T23:59:59Z", "year 9999 is outside 2000..2099"),  # OverflowError in the calendar
        ("0001-01-01T00:00:00+01:00", "year 1 is outside 2000..2099"),  # ValueError converting to UTC
        ("1970-01-01T00:00:00Z", "year 1970 is outside"),  # an unset timestamp
    ],
)
async def test_times_at_the_ends_of_the_calendar_are_schema_dead_letters(
    processor: BatchProcessor, store: MemoryStore, time: str, why: str
) -> None:
    feed = Feed()
    bad = ev("reported", "Y", T0, severity="critical", region="au") | {"time": time}
    result = await processor.process(
        [feed(bad), feed(ev("reported", "OK", T0, severity="low", region="uk"))], [], T0
    )
    [(reason, detail)] = rejections(result)
    assert reason == "schema" and detail.startswith("time: ") and why in detail
    assert_flows_on(result, store, ["OK"], 2)


async def test_an_update_dated_2099_on_a_live_critical_incident_fires_nothing(
    processor: BatchProcessor, store: MemoryStore
) -> None:
    feed = Feed()
    await processor.process([feed(ev("reported", "LIVE", T0, severity="critical", region="uk"))], [], T0)
    future = ev("updated", "LIVE", T0, note="n") | {"time": "2099-01-01T00:00:00Z"}
    result = await processor.process([feed(future)], [], T0 + timedelta(seconds=1))
    assert [o.type for o in result.outputs] == ["incident.rejected"]  # no breach, no failover order
    [(reason, detail)] = rejections(result)
    assert (
        reason == "schema" and "ahead of the engine clock" in detail and "INCIDENTS_MAX_CLOCK_SKEW" in detail
    )
    assert store.incidents["LIVE"]["seq"] == 1


async def test_a_report_older_than_the_horizon_breaches_nothing(
    processor: BatchProcessor, store: MemoryStore
) -> None:
    feed = Feed()
    old = ev("reported", "OLD", T0 - timedelta(days=31), severity="critical", region="uk")
    result = await processor.process([feed(old)], [], T0)
    assert [o.type for o in result.outputs] == ["incident.rejected"]
    [(reason, detail)] = rejections(result)
    assert reason == "schema" and "INCIDENTS_MAX_EVENT_AGE" in detail and "31 days old" in detail
    assert store.incidents == {}


async def test_times_within_the_skew_and_the_horizon_are_taken(store: MemoryStore) -> None:
    processor = BatchProcessor(
        SlaDomain(PolicyRegistry.load()), store, "g",
        max_clock_skew=timedelta(minutes=2), max_event_age=timedelta(days=2),
    )  # fmt: skip
    feed = Feed()
    records = [
        feed(ev("reported", "SOON", T0 + timedelta(minutes=2), severity="low", region="uk")),
        feed(ev("reported", "LATE", T0 - timedelta(days=2), severity="low", region="uk")),
        feed(ev("reported", "EARLY", T0 + timedelta(minutes=2, seconds=1), severity="low", region="uk")),
        feed(ev("reported", "STALE", T0 - timedelta(days=2, seconds=1), severity="low", region="uk")),
    ]
    result = await processor.process(records, [], T0)
    assert [r for r, _ in rejections(result)] == ["schema", "schema"]
    assert_flows_on(result, store, ["SOON", "LATE"], 4)


async def test_bad_trace_headers_start_a_new_root_trace(
    processor: BatchProcessor, store: MemoryStore
) -> None:
    feed = Feed()
    valid = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    bad_parents = [b"\xff\xfe\x00", b"00-" + b"0" * 32 + b"-b7ad6b7169203331-01", b"not a traceparent",
                   valid + b"\x00", valid.replace(b"0af7", b"0AF7")]  # fmt: skip
    records = []
    for n, parent in enumerate(bad_parents):
        record = feed(ev("reported", f"T{n}", T0, severity="low", region="uk"))
        record.headers = [("traceparent", parent), ("tracestate", b"k=\xff")]
        records.append(record)
    kept = feed(ev("reported", "TV", T0, severity="low", region="uk"))
    kept.headers = [("traceparent", valid), ("tracestate", b"\x00bad"), ("other", b"\xff")]
    result = await processor.process([*records, kept], [], T0)
    assert rejections(result) == []
    assert [e.trace_context for e in result.write.events] == [None] * 5 + [{"traceparent": valid.decode()}]


async def test_bad_trace_headers_are_new_roots_when_traced(store: MemoryStore) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from incident_engine.adapters.telemetry import create_telemetry

    exporter = InMemorySpanExporter()
    telemetry = create_telemetry("test", span_exporters=[exporter])
    processor = BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "g", tracer=telemetry.tracer)
    feed = Feed()
    record = feed(ev("reported", "TR", T0, severity="low", region="uk"))
    record.headers = [("traceparent", b"00-\xff\xfe-zz-01")]
    result = await processor.process([record], [], T0)
    telemetry.tracer_provider.force_flush()
    [span] = [s for s in exporter.get_finished_spans() if s.name == "incidents.events process"]
    telemetry.shutdown()
    assert span.parent is None and rejections(result) == []
    stored = result.write.events[0].trace_context
    assert stored is not None
    assert stored["traceparent"].startswith(f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-")


async def test_a_header_name_that_is_not_utf8_is_a_decode_dead_letter(
    processor: BatchProcessor, store: MemoryStore
) -> None:
    feed = Feed()
    record = feed(ev("reported", "HK", T0, severity="low", region="uk"))
    # What aiokafka yields through adapters/kafka_records.py for the name bytes b"x-\xff".
    record.headers = [("x-\udcff", b"v")]
    result = await processor.process(
        [record, feed(ev("reported", "OK", T0, severity="low", region="uk"))], [], T0
    )
    [(reason, detail)] = rejections(result)
    assert reason == "decode" and "header name b'x-\\xff' is not UTF-8" in detail
    assert result.outputs[0].subject == "HK"
    assert_flows_on(result, store, ["OK"], 2)


def binary(feed: Feed, key: str, **headers: bytes) -> Record:
    record = feed(b'{"severity": "low", "region": "uk", "summary": "s"}', key=key)
    base = {
        "ce_specversion": b"1.0", "ce_id": b"b-1", "ce_source": b"/channels/phone/uk",
        "ce_type": b"incident.reported", "ce_subject": key.encode(), "ce_time": T0.isoformat().encode(),
    }  # fmt: skip
    record.headers = list((base | headers).items())
    return record


async def test_binary_mode_with_bad_headers_is_dead_lettered(
    processor: BatchProcessor, store: MemoryStore
) -> None:
    feed = Feed()
    records = [
        binary(feed, "B1", ce_id=b"\xff\xfe"),  # not UTF-8
        binary(feed, "B2", ce_time=b"\xc3("),
        binary(feed, "B3", ce_subject=b"B3\x00"),  # NUL: cannot be stored
        binary(feed, "B4", ce_time=b"9999-12-31T23:59:59Z"),
        binary(feed, "B5", **{"content-type": b"\xff"}),
        binary(feed, "B6", ce_traceparent=b"\x00"),  # an extension attribute with a control character
        binary(feed, "OK"),
    ]
    result = await processor.process(records, [], T0)
    assert [r for r, _ in rejections(result)] == ["decode", "decode", "schema", "schema", "decode", "schema"]
    assert_flows_on(result, store, ["OK"], 7)


async def test_the_same_id_from_two_sources_is_two_events(
    processor: BatchProcessor, store: MemoryStore
) -> None:
    feed = Feed()
    phone = ev("reported", "P", T0, severity="low", region="au") | {"id": "1", "source": "/channels/phone/au"}
    email = ev("reported", "M", T0, severity="low", region="uk") | {"id": "1", "source": "/channels/email"}
    ack = ev("acknowledged", "P", T0) | {"id": "2", "source": "/channels/phone/au"}
    result = await processor.process([feed(phone), feed(email), feed(phone)], [], T0)
    assert [(e.source, e.event_id, e.incident_id) for e in result.write.events] == [
        ("/channels/phone/au", "1", "P"), ("/channels/email", "1", "M")
    ]  # fmt: skip
    assert result.outcomes[("incident.reported", "ignored_repeat")] == 1  # the phone's own repeat
    email_ack = ev("acknowledged", "M", T0) | {"id": "2", "source": "/channels/email"}
    later = await processor.process([feed(ack), feed(email_ack), feed(email), feed(ack)], [], T0)
    assert [(e.source, e.incident_id) for e in later.write.events] == [
        ("/channels/phone/au", "P"), ("/channels/email", "M")
    ]  # fmt: skip
    assert later.outcomes[("incident.reported", "ignored_repeat")] == 1  # committed before: still known
    assert later.outcomes[("incident.acknowledged", "ignored_repeat")] == 1  # repeated in the batch
    assert {store.incidents[i]["state"] for i in ("P", "M")} == {"acknowledged"}


async def test_the_same_id_from_two_sources_while_a_batch_commits(store: MemoryStore) -> None:
    """The ids decided but not committed yet (`uncommitted_ids`) are (source, id) as well."""
    processor = BatchProcessor(SlaDomain(PolicyRegistry.load()), store, "g")
    feed = Feed()
    first = await processor.decide(
        [feed(ev("reported", "U", T0, severity="low", region="au") | {"id": "7", "source": "/a"})], [], T0
    )
    second = await processor.decide(
        [feed(ev("reported", "V", T0, severity="low", region="au") | {"id": "7", "source": "/b"}),
         feed(ev("reported", "U", T0, severity="low", region="au") | {"id": "7", "source": "/a"})], [], T0
    )  # fmt: skip
    await processor.commit(first)
    await processor.commit(second)
    assert [e.incident_id for e in second.write.events] == ["V"]
    assert set(store.incidents) == {"U", "V"}


async def test_transitions_caused_by_the_same_id_from_two_sources_have_distinct_output_ids(
    processor: BatchProcessor,
) -> None:
    feed = Feed()
    report = ev("reported", "S", T0, severity="low", region="uk") | {"id": "1", "source": "/channels/email"}
    ack = ev("acknowledged", "S", T0) | {"id": "5", "source": "/channels/phone/au"}
    restore = ev("restored", "S", T0) | {"id": "5", "source": "/channels/phone/uk"}
    result = await processor.process([feed(report), feed(ack), feed(restore)], [], T0)
    changes = [o for o in result.outputs if o.type == "incident.state.changed"]
    assert [(o.data["to"], o.data["cause"]) for o in changes] == [("reported", "1"), ("acknowledged", "5"),
                                                                  ("restored", "5")]  # fmt: skip
    assert len({o.id for o in changes}) == 3  # downstream deduplicates on the id: none may be lost
    assert changes[0].id == stable_id("S/state/1")  # a creation keeps its id


async def test_an_event_far_ahead_of_when_kafka_took_it_is_refused(
    processor: BatchProcessor, store: MemoryStore
) -> None:
    """Read from a backlog two hours late, an event stamped two hours after Kafka took it (its
    sender's clock is fast) is judged against the moment Kafka took it, not the engine's clock: a
    `schema` dead letter, so it cannot move its partition's SLA time past the events behind it."""
    feed = Feed()
    now = T0 + timedelta(hours=2)
    record = feed(ev("reported", "FAST", now, severity="critical", region="uk"))
    record.timestamp = int(T0.timestamp() * 1000)  # type: ignore[attr-defined]  # appended at T0
    result = await processor.process([record], [], now)
    (dead,) = [o for o in result.outputs if o.type == "incident.rejected"]
    assert dead.data["reason"] == "schema"
    assert "ahead of the moment Kafka took it" in dead.data["detail"]
    assert result.write.events == []
    on_time = feed(ev("reported", "SLOW", T0 + timedelta(minutes=1), severity="critical", region="uk"))
    on_time.timestamp = int(T0.timestamp() * 1000)  # type: ignore[attr-defined]
    assert [e.incident_id for e in (await processor.process([on_time], [], now)).write.events] == ["SLOW"]


def test_the_incident_cache_drops_only_what_it_is_over_by_oldest_first_never_an_uncommitted_one() -> None:
    """A trim after each batch takes about what the batch added: a short, even cost (dropping a
    quarter of a full cache at once held the event loop, and every due timer, for tens of ms)."""
    at = datetime(2026, 3, 2, tzinfo=UTC)
    cache = IncidentCache(limit=100)
    for n in range(100):
        cache.put(Incident(f"I{n}", "open", "livepro-1", "high", "au", at, at))
    cache.trim(protect=())
    assert len(cache.items) == 100  # at the limit: nothing to drop
    for n in range(100, 105):
        cache.put(Incident(f"I{n}", "open", "livepro-1", "high", "au", at, at))
    cache.trim(protect={"I0", "I2"})  # not committed yet: kept, the next oldest go instead
    assert len(cache.items) == 100
    assert [k for k in ("I0", "I1", "I2", "I3", "I4", "I5", "I6", "I7") if k in cache.items] == [
        "I0",
        "I2",
        "I7",
    ]
    assert "I104" in cache.items

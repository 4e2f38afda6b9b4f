"""The batch processor on the in-memory store: exactly-once, dead letters, fencing, timers, replay."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from incident_contracts import TOPIC_EVENTS
from incident_engine.adapters.memory import MemoryStore
from incident_engine.adapters.store import BatchWrite, OffsetConflict
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.entrypoints.commands import build_event
from incident_engine.entrypoints.processor import BatchProcessor
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

    async def held_commit(batch: BatchWrite) -> None:
        rows = {i: (inc.copy(), p) for i, (inc, p) in batch.incidents.items()}
        await gate.wait()
        await commit(dataclasses.replace(batch, incidents=rows))

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

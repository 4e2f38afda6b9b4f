"""Reading the engine's output topics as a person does: `incidents tail` and `publish --wait`.

A follower is a plain consumer without a group (it commits nothing and disturbs no one), assigned
every partition of the topics it follows, from their end ("from now") or their beginning.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from rich.text import Text

from incident_contracts import TOPIC_BREACHES, TOPIC_EVENTS, TOPIC_REJECTED, TOPIC_STATE
from incident_contracts.constants import (
    FAILOVER_REQUIRED,
    INCIDENT_REJECTED,
    REJECTION_REASONS,
    SLA_BREACHED,
    SLA_RETRACTED,
    SLA_WARNING,
    STATE_CHANGED,
)
from incident_contracts.envelope import stable_id
from incident_platform.kafka import kafka_security
from incident_platform.settings import PlatformSettings

OUTPUT_TOPICS = (TOPIC_STATE, TOPIC_BREACHES, TOPIC_REJECTED)
_SHORT_TOPICS = {"state": TOPIC_STATE, "breaches": TOPIC_BREACHES, "rejected": TOPIC_REJECTED}


class TopicsMissing(Exception):
    """Output topics that do not exist yet (the engine creates them on its first start)."""

    def __init__(self, topics: Sequence[str], bootstrap: str) -> None:
        super().__init__(
            f"no topic {', '.join(topics)} on Kafka at {bootstrap}: the engine creates its topics when it"
            " first starts; run `incidents serve` (or check KAFKA_BOOTSTRAP_SERVERS)"
        )


def topic_name(name: str) -> str:
    """`state`, `breaches`, `rejected` or a full output topic name -> the topic name; ValueError otherwise."""
    topic = _SHORT_TOPICS.get(name, name)
    if topic not in OUTPUT_TOPICS:
        raise ValueError(
            f"unknown topic {name!r}; one of {', '.join(_SHORT_TOPICS)} (or {', '.join(OUTPUT_TOPICS)})"
        )
    return topic


async def open_follower(
    settings: PlatformSettings, topics: Sequence[str], *, from_beginning: bool = False
) -> AIOKafkaConsumer:
    """A started consumer on every partition of `topics`, positioned now (or at the beginning)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        **kafka_security(settings),
    )
    try:
        await consumer.start()
        # (consumer.topics() fetches the same but keeps only the names; partitions_for_topic()
        # knows only topics already in the client's metadata, which a group-less consumer lacks)
        cluster = await consumer._client.fetch_all_metadata()
        missing = [t for t in topics if t not in cluster.topics()]
        if missing:
            raise TopicsMissing(missing, settings.kafka_bootstrap_servers)
        partitions = [TopicPartition(t, p) for t in topics for p in sorted(cluster.partitions_for_topic(t))]
        consumer.assign(partitions)
        if from_beginning:
            await consumer.seek_to_beginning(*partitions)
        else:
            await consumer.seek_to_end(*partitions)
        for tp in partitions:  # resolve the positions now: "from now" is now, not the first poll
            await consumer.position(tp)
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def follow(
    consumer: AIOKafkaConsumer, poll_ms: int = 200
) -> AsyncIterator[tuple[bytes, dict[str, Any]]]:
    """(raw value, parsed CloudEvent) of every message read, in the order of each partition; an
    unparseable value (not the engine's) is given as {} rather than stopping the follower."""
    while True:
        batches = await consumer.getmany(timeout_ms=poll_ms)
        for records in batches.values():
            for record in records:
                raw = record.value or b""
                try:
                    event = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    event = {}
                yield raw, event if isinstance(event, dict) else {}
        if not batches:
            yield b"", {}  # a heartbeat: lets the caller check its deadline while the topics are idle


@dataclass(frozen=True)
class Filter:
    """Which outputs a person asked to see (None: any)."""

    incident: str | None = None
    types: tuple[str, ...] = ()
    severity: str | None = None

    def matches(self, event: dict[str, Any]) -> bool:
        """Whether an output passes every criterion given."""
        if self.incident is not None and event.get("subject") != self.incident:
            return False
        kind = str(event.get("type", ""))
        if self.types and not any(kind == t or kind.endswith("." + t) for t in self.types):
            return False
        data = event.get("data") or {}
        return self.severity is None or data.get("severity") == self.severity


_STYLES = {
    STATE_CHANGED: ("state", "cyan"),
    SLA_WARNING: ("warning", "yellow"),
    SLA_BREACHED: ("BREACHED", "bold red"),
    FAILOVER_REQUIRED: ("FAILOVER", "bold magenta"),
    SLA_RETRACTED: ("retracted", "green"),
    INCIDENT_REJECTED: ("rejected", "red"),
}


def _moment(value: Any) -> str:
    """An RFC 3339 instant shortened for reading: 2026-03-05 14:45:00Z."""
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M:%SZ")
    except ValueError:
        return str(value)


def _details(kind: str, data: dict[str, Any]) -> str:
    """The few fields of an output that matter to a person reading it."""
    where = " ".join(str(data[k]) for k in ("severity", "region", "policy") if data.get(k))
    if kind == STATE_CHANGED:
        return f"{data.get('from') or '(new)'} -> {data.get('to')}  {where}  cause {data.get('cause')}"
    if kind == SLA_WARNING:
        threshold = data.get("threshold")
        share = f"{threshold * 100:.0f}%" if isinstance(threshold, int | float) else "?"
        return f"{data.get('clock')} {share} of its budget, due {_moment(data.get('due_at'))}  {where}"
    if kind == SLA_BREACHED:
        return f"{data.get('clock')} breached, was due {_moment(data.get('due_at'))}  {where}"
    if kind == FAILOVER_REQUIRED:
        return f"fail over now: restore was due {_moment(data.get('due_at'))}  {where}"
    if kind == SLA_RETRACTED:
        return (
            f"{data.get('retracted_type')} on {data.get('clock')} withdrawn: stopped at"
            f" {_moment(data.get('stopped_at'))}, due {_moment(data.get('due_at'))}"
            f"  cause {data.get('cause')}"
        )
    if kind == INCIDENT_REJECTED:
        return f"{data.get('reason')}: {data.get('detail')}"
    return orjson.dumps(data).decode()


def render(event: dict[str, Any]) -> Text:
    """One readable, coloured line for an output CloudEvent (rich Text: never parsed as markup)."""
    kind = str(event.get("type", "?"))
    label, style = _STYLES.get(kind, (kind, "white"))
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    line = Text()
    line.append(_moment(event.get("time", "?")), style="dim")
    line.append("  ")
    line.append(f"{label:<9}", style=style)
    line.append("  ")
    line.append(str(event.get("subject") or "-"), style="bold")
    line.append("  ")
    line.append(_details(kind, data or {}))
    return line


@dataclass(frozen=True)
class Verdict:
    """The engine's answer to one published event: accepted (with its state change) or rejected."""

    accepted: bool
    event: dict[str, Any]

    def describe(self) -> str:
        """One line for a person."""
        data = self.event.get("data") or {}
        if self.accepted:
            return f"accepted: {self.event.get('subject')} {data.get('from') or '(new)'} -> {data.get('to')}"
        return f"rejected ({data.get('reason')}): {data.get('detail')}"


def verdict_ids(event: dict[str, Any], partition: int, offset: int) -> tuple[set[str], set[str]]:
    """The output ids the engine's verdict on `event` can carry: (state changes, rejections).

    They are deterministic (see `incident_engine.domain.outputs`): a state change derives from the
    incident and the cause's id (and source), a rejection from the event's (source, id), or from
    where it was read (topic/partition/offset) when the event itself could not be read."""
    subject, event_id, source = event["subject"], event["id"], event["source"]
    changes = {stable_id(f"{subject}/state/{event_id}"), stable_id(f"{subject}/state/{event_id}/{source}")}
    origins = (f"{source} {event_id}", f"{TOPIC_EVENTS}/{partition}/{offset}", event_id)
    rejections = {
        stable_id(f"{origin}/rejected/{reason}") for origin in origins for reason in REJECTION_REASONS
    }
    return changes, rejections


def verdict_of(output: dict[str, Any], changes: set[str], rejections: set[str]) -> Verdict | None:
    """The verdict when `output` is the engine's answer to the event these ids were made for."""
    output_id = output.get("id")
    if output_id in changes and output.get("type") == STATE_CHANGED:
        return Verdict(True, output)
    if output_id in rejections and output.get("type") == INCIDENT_REJECTED:
        return Verdict(False, output)
    return None

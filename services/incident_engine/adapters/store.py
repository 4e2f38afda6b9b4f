"""The storage port of the engine: what one batch writes, and what the engine reads back."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from incident_contracts import TOPIC_EVENTS
from incident_engine.domain import Incident

EventKey = tuple[str, str]
"""An input event's identity, as CloudEvents defines it: (source, id)."""


class OffsetConflict(RuntimeError):
    """Another consumer advanced a partition we thought we owned (a rebalance): the batch is void.

    Also raised when the batch's ownership epochs are stale (another replica claimed one of its
    partitions since) or an incident projection moved past the seq the batch was decided from.
    """


class RepeatConflict(OffsetConflict):
    """A batch refused because one of its events (source, id) is in the log already: a repeat it
    was decided without looking up (see `IncidentCache`). Redone after a reset, it is looked up,
    and dropped."""

    def __init__(self, key: EventKey | None) -> None:
        what = f"event {key[0]} {key[1]}" if key is not None else "an event of the batch"
        super().__init__(f"{what} is in the event log already; the batch is redone, every event looked up")


@dataclass(slots=True)
class LoggedEvent:
    """One accepted input event, as appended to the event log."""

    incident_id: str
    seq: int
    event_id: str
    type: str
    source: str
    event_time: datetime
    processed_at: datetime
    partition: int
    offset: int
    envelope: bytes  # JSON of the structured CloudEvent
    trace_context: dict[str, str] | None = None


@dataclass(slots=True)
class OutboxRow:
    """One output CloudEvent waiting for the relay."""

    partition: int
    topic: str
    key: bytes | None
    event_id: str
    payload: bytes
    headers: dict[str, str] | None = None
    id: int = 0  # assigned by the store


@dataclass(slots=True)
class TimerRow:
    """The earliest pending SLA firing of one incident."""

    incident_id: str
    partition: int
    due_at: datetime
    trace_context: dict[str, str] | None = None


@dataclass
class BatchWrite:
    """Everything one batch changes, committed atomically with the consumed offsets."""

    group_id: str
    events: list[LoggedEvent] = field(default_factory=list)
    incidents: dict[str, tuple[Incident, int]] = field(default_factory=dict)  # id -> (state, partition)
    created: set[str] = field(default_factory=set)  # those of `incidents` reported in this batch
    timers: dict[str, TimerRow | None] = field(default_factory=dict)  # None: no pending timer any more
    outbox: list[OutboxRow] = field(default_factory=list)
    # Timers fired outside a logged event: (incident, at) -> (partition, until, breach_until), the
    # horizons they fired under (what was due by `until`; breaches and failover orders by `breach_until`)
    firings: dict[tuple[str, datetime], tuple[int, datetime, datetime]] = field(default_factory=dict)
    sent_outbox: list[int] = field(default_factory=list)  # outbox rows Kafka acknowledged: delete them
    # (topic, partition) -> (offset the batch started from, next offset after it)
    offsets: dict[tuple[str, int], tuple[int | None, int]] = field(default_factory=dict)
    # Fencing: input partition -> ownership epoch the batch was decided under (`EventStore.claim`).
    # Every partition the batch touches is checked in its transaction; one missing here counts as
    # epoch 0, which passes only while nobody ever claimed that partition (tools, tests).
    epochs: dict[int, int] = field(default_factory=dict)
    # incident id -> the projection's seq the batch's decisions started from: an update of a row
    # whose seq is no longer that voids the batch (someone else wrote the incident since).
    decided_from: dict[str, int] = field(default_factory=dict)
    input_topic: str = TOPIC_EVENTS

    def empty(self) -> bool:
        """True when committing would change nothing."""
        return not (self.events or self.incidents or self.timers or self.outbox or self.offsets)

    def partitions(self) -> set[int]:
        """Every input partition this batch writes for (records, incidents, timers, firings, outputs)."""
        touched = {partition for _, partition in self.offsets}
        touched.update(partition for _, partition in self.incidents.values())
        touched.update(row.partition for row in self.timers.values() if row is not None)
        touched.update(partition for partition, _, _ in self.firings.values())
        touched.update(out.partition for out in self.outbox)
        return touched

    def fence(self) -> dict[int, int]:
        """The epoch to check for each partition the batch touches (0: never claimed)."""
        return {partition: self.epochs.get(partition, 0) for partition in sorted(self.partitions())}


class EventStore(Protocol):
    """Postgres in production, an in-memory twin in unit tests; one contract suite runs against both."""

    async def committed_offsets(self, group_id: str, topic: str, partitions: list[int]) -> dict[int, int]:
        """Next offset to consume per partition, for those that have one."""
        ...

    async def claim(self, group_id: str, topic: str, partitions: list[int]) -> dict[int, int]:
        """Take ownership of partitions (on assignment): bump and return their epochs. Batches
        decided under an older epoch of any of them are refused from now on."""
        ...

    async def epochs(self, group_id: str, topic: str, partitions: list[int]) -> dict[int, int]:
        """The current ownership epoch of these partitions (those ever claimed)."""
        ...

    async def known_event_ids(self, event_keys: list[EventKey]) -> set[EventKey]:
        """Which of these input events, by (source, id), are already in the event log."""
        ...

    async def load_incidents(self, incident_ids: list[str]) -> dict[str, Incident]:
        """Current state of these incidents (absent ones are unknown)."""
        ...

    async def lookup(
        self, event_keys: list[EventKey], incident_ids: list[str]
    ) -> tuple[set[EventKey], dict[str, Incident]]:
        """`known_event_ids` and `load_incidents` at once (in one round trip where that matters)."""
        ...

    async def load_timers(self, partitions: list[int]) -> list[TimerRow]:
        """Every pending timer row of these partitions."""
        ...

    async def commit(self, batch: BatchWrite, after: Awaitable[object] | None = None) -> None:
        """Write the batch in one transaction; raise OffsetConflict (writing nothing) when the offsets
        moved under us, an epoch of `batch.fence()` is stale or a projection left `decided_from`.

        `after`: the commit of the batch decided before this one, still running. The batch's rows
        are taken from its (shared, cached) incidents at once, before anything is awaited; they are
        written once `after` is done, and not at all when it failed (its exception is raised).

        Sets the `id` of each of `batch.outbox` to its outbox row's (the relay deletes by it).
        """
        ...

    async def pending_outbox(self, partitions: list[int], limit: int) -> list[OutboxRow]:
        """The oldest unsent outputs of these partitions, in commit order."""
        ...

    async def mark_sent(self, ids: list[int]) -> None:
        """Forget outbox rows that Kafka acknowledged."""
        ...

    async def outbox_backlog(self) -> int:
        """How many outputs wait for the relay."""
        ...

    async def park(self, row: OutboxRow, error: str) -> None:
        """Keep an output the broker refused for good (with its error) out of the relay's way."""
        ...

    async def parked_outputs(self) -> list[tuple[OutboxRow, str]]:
        """Every parked output with the broker's error, oldest first (`id` is the parked row's)."""
        ...

    async def unpark(self, ids: list[int]) -> None:
        """Forget parked outputs (re-sent by an operator)."""
        ...

    async def read_log(self, incident_id: str | None = None) -> list[dict[str, Any]]:
        """The event log (of one incident or all), in (incident, seq) order."""
        ...

    async def read_firings(self) -> list[tuple[str, datetime, datetime | None, datetime | None]]:
        """Every recorded timer firing (incident id, moment)."""
        ...

    async def incident_rows(self) -> dict[str, dict[str, Any]]:
        """Every incident projection body, by id."""
        ...

    async def timer_rows(self) -> dict[str, datetime]:
        """Every durable timer's due moment, by incident id."""
        ...

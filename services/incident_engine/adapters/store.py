"""The storage port of the engine: what one batch writes, and what the engine reads back."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from incident_engine.domain import Incident

EventKey = tuple[str, str]
"""An input event's identity, as CloudEvents defines it: (source, id)."""


class OffsetConflict(RuntimeError):
    """Another consumer advanced a partition we thought we owned (a rebalance): the batch is void."""


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

    def empty(self) -> bool:
        """True when committing would change nothing."""
        return not (self.events or self.incidents or self.timers or self.outbox or self.offsets)


class EventStore(Protocol):
    """Postgres in production, an in-memory twin in unit tests; one contract suite runs against both."""

    async def committed_offsets(self, group_id: str, topic: str, partitions: list[int]) -> dict[int, int]:
        """Next offset to consume per partition, for those that have one."""
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

    async def commit(self, batch: BatchWrite) -> None:
        """Write the batch in one transaction; raise OffsetConflict when the offsets moved under us.

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

"""What the console reads and does, as a Protocol the engine implements (no engine import here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol


@dataclass(frozen=True)
class ClockView:
    """One SLA clock as the console shows it; business seconds are what the SLA counts."""

    name: str
    status: str  # running | met | breached | cancelled
    cycle: int
    started_at: datetime
    due_at: datetime
    stopped_at: datetime | None
    budget_seconds: float  # business time from start to due
    elapsed_seconds: float  # business time from start to now (or to the stop)
    open_now: bool  # business time runs now (always for a 24x7 clock)
    resumes_at: datetime | None  # when a paused clock runs again
    zone: str  # the region's IANA time zone, for local times

    @property
    def running(self) -> bool:
        """True until the clock is stopped (a breached clock runs on until then)."""
        return self.stopped_at is None

    @property
    def fraction(self) -> float:
        """How far towards its due moment (1.0 = due), in business time."""
        return self.elapsed_seconds / self.budget_seconds if self.budget_seconds > 0 else 1.0

    @property
    def remaining_seconds(self) -> float:
        """Business time left until due (negative: past due)."""
        return self.budget_seconds - self.elapsed_seconds


@dataclass(frozen=True)
class IncidentSummary:
    """One row of the board."""

    id: str
    state: str
    severity: str
    region: str
    policy: str
    summary: str
    channel: str
    reported_at: datetime
    updated_at: datetime
    clocks: list[ClockView] = field(default_factory=list)

    @property
    def urgency(self) -> float:
        """Business seconds left to the next due moment of a running clock (least first; none: +inf)."""
        left = [c.remaining_seconds for c in self.clocks if c.running]
        return min(left) if left else float("inf")


@dataclass(frozen=True)
class TimelineEntry:
    """An event of an incident: accepted (logged) or rejected (a dead letter)."""

    time: datetime
    type: str
    channel: str
    event_id: str
    accepted: bool
    seq: int | None = None
    trace_id: str | None = None
    detail: str = ""  # note, by, site, or the rejection's reason and detail
    user: str | None = None


@dataclass(frozen=True)
class TimerView:
    """A pending firing."""

    due_at: datetime
    clock: str
    kind: str  # warning | breached | failover
    threshold: float | None


@dataclass(frozen=True)
class WhatIfView:
    """The incident's clocks had it run under another policy."""

    policy: str
    clocks: list[ClockView]
    same_rules: bool  # the other policy has the same clocks and calendar for this severity


@dataclass(frozen=True)
class IncidentDetail:
    """Everything the incident page shows."""

    incident: IncidentSummary
    timeline: list[TimelineEntry]
    timers: list[TimerView]
    what_if: list[WhatIfView]
    actions: list[str]  # input types the lifecycle allows now (`acknowledged`, ..., `updated`)


class ConsoleBackend(Protocol):
    """The engine's side of the console."""

    async def open_incidents(self, now: datetime) -> list[IncidentSummary]:
        """Every incident not yet restored, with its clocks as of `now`."""
        ...

    async def incident(self, incident_id: str, now: datetime) -> IncidentDetail | None:
        """One incident (restored ones too), or None when unknown."""
        ...

    def policies(self) -> list[str]:
        """Names of the loaded policies (for the filter)."""
        ...

    async def publish(self, event: dict[str, Any]) -> None:
        """Publish an input CloudEvent to `incidents.events` (acks=all); raise when Kafka refuses."""
        ...

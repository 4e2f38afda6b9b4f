"""What the SLA report needs of one incident, taken from its replay: times, clock outcomes, breaches."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from incident_contracts.constants import (
    CLOCK_ACK,
    CLOCK_RESOLUTION,
    CLOCK_RESTORE,
    INCIDENT_FAILED_OVER,
    INCIDENT_REPORTED,
    INCIDENT_RESTORED,
    INCIDENT_UPDATED,
)
from incident_engine.domain import Incident, SlaDomain, Timer
from incident_engine.domain.model import BREACH, FAILOVER
from incident_engine.reporting.source import EVENT_TIME, TYPE

_RESTORING = frozenset({INCIDENT_FAILED_OVER, INCIDENT_RESTORED})


@dataclass(slots=True)
class IncidentFacts:
    """One incident as the report sees it. Times are the effective ones the clocks used (a late
    event never moves a clock back); `restore_clock` is `restore`, `resolution` or None (low)."""

    incident_id: str
    severity: str
    region: str
    policy: str
    reported_at: datetime
    acknowledged_at: datetime | None = None
    restored_at: datetime | None = None  # service back: failed over or restored, whichever first
    failed_over: bool = False
    ack_status: str | None = None  # met | breached | running; None when the policy has no ack clock
    restore_clock: str | None = None
    restore_status: str | None = None
    ack_business: timedelta | None = None
    restore_business: timedelta | None = None
    breaches: Counter[str] = field(default_factory=Counter)  # by clock
    failovers_ordered: int = 0

    @property
    def ack_wall(self) -> timedelta | None:
        """Wall-clock time to acknowledge."""
        return None if self.acknowledged_at is None else self.acknowledged_at - self.reported_at

    @property
    def restore_wall(self) -> timedelta | None:
        """Wall-clock time to restore (or fail over)."""
        return None if self.restored_at is None else self.restored_at - self.reported_at


def incident_facts(
    domain: SlaDomain, incident: Incident, rows: list[Any], fired: list[Timer]
) -> IncidentFacts:
    """The facts of a replayed incident, from its log rows (type, event time) and the timers its replay
    fired (each the warning, breach or failover order it emitted)."""
    facts = IncidentFacts(
        incident.id, incident.severity, incident.region, incident.policy, incident.reported_at
    )
    watermark = incident.reported_at
    for row in rows:
        kind = row[TYPE]
        if kind in (INCIDENT_REPORTED, INCIDENT_UPDATED):
            continue
        at = row[EVENT_TIME]
        watermark = at if at > watermark else watermark
        if facts.acknowledged_at is None:
            facts.acknowledged_at = watermark  # every lifecycle move after `reported` implies an ack
        if kind in _RESTORING:
            facts.failed_over = facts.failed_over or kind == INCIDENT_FAILED_OVER
            if facts.restored_at is None:
                facts.restored_at = watermark
    clocks = incident.clocks
    if CLOCK_ACK in clocks:
        facts.ack_status = clocks[CLOCK_ACK].status
    for name in (CLOCK_RESTORE, CLOCK_RESOLUTION):
        if name in clocks:
            facts.restore_clock, facts.restore_status = name, clocks[name].status
            break
    calendar = domain.policies.get(incident.policy).calendar(incident.severity, incident.region)
    if facts.acknowledged_at is not None:
        facts.ack_business = calendar.elapsed(facts.reported_at, facts.acknowledged_at)
    if facts.restored_at is not None:
        facts.restore_business = calendar.elapsed(facts.reported_at, facts.restored_at)
    for timer in fired:
        if timer.kind == BREACH:
            facts.breaches[timer.clock] += 1
        elif timer.kind == FAILOVER:
            facts.failovers_ordered += 1
    return facts

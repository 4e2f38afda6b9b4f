"""The replays behind `incidents replay --as-of`, `replay --policy` and `report`, read from PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from incident_engine.domain import Incident, SlaDomain, Timer
from incident_engine.gc_pause import gc_paused
from incident_engine.replay import replay_incident
from incident_engine.reporting.compliance import Report, build_report
from incident_engine.reporting.facts import IncidentFacts, incident_facts
from incident_engine.reporting.source import Group, LogScope, LogSummary, scan
from incident_engine.reporting.whatif import WhatIf

Progress = Callable[[int, int], None]


@dataclass
class StateAt:
    """Every incident of a scope at `as_of` (None: now), from the log alone: as the engine had it then
    (processing time), or, with `event_time`, as the events' own times say it was (every event
    stamped up to `as_of`, whenever it was read, and the timers fired at their due moments)."""

    as_of: datetime | None
    event_time: bool = False
    incidents: dict[str, Incident] = field(default_factory=dict)
    events: int = 0
    firings: int = 0

    def visit(self, domain: SlaDomain, groups: list[Group]) -> None:
        """Replay each incident up to `as_of`: exactly (recorded firings), or on time in event time
        (the rows are those stamped up to `as_of`: `LogScope.event_until`)."""
        as_of = self.as_of
        for incident_id, rows, fired in groups:
            if self.event_time and as_of is not None:
                done: list[Timer] = []
                incident, applied = replay_incident(domain, rows, on_time_until=as_of, fired=done)
                self.firings += len(done)
            else:
                incident, applied = replay_incident(domain, rows, fired, as_of=as_of)
                self.firings += len(fired)
            self.events += applied
            if incident is not None:
                self.incidents[incident_id] = incident


async def state_at(
    dsn: str,
    domain: SlaDomain,
    scope: LogScope,
    *,
    progress: Progress | None = None,
    archive: Path | None = None,
) -> tuple[StateAt, LogSummary]:
    """Replay the scope up to `scope.event_until` (event time) or else `scope.processed_until`."""
    if scope.event_until is not None:
        state = StateAt(scope.event_until, event_time=True)
    else:
        state = StateAt(scope.processed_until)
    with gc_paused(keep=True):
        summary = await scan(
            dsn, scope, lambda groups: state.visit(domain, groups), progress=progress, archive=archive
        )
    return state, summary


async def what_if(
    dsn: str,
    baseline: SlaDomain,
    shadow: SlaDomain,
    policy: str,
    scope: LogScope,
    horizon: datetime,
    *,
    exhaustive: bool = False,
    progress: Progress | None = None,
    archive: Path | None = None,
) -> WhatIf:
    """Compare the scope's incidents under their pinned policies and under `policy` (in `shadow`)."""
    result = WhatIf(policy, horizon, exhaustive=exhaustive)
    with gc_paused(keep=True):
        visit = lambda groups: result.visit(baseline, shadow, groups)  # noqa: E731
        await scan(dsn, scope, visit, progress=progress, archive=archive)
    return result


@dataclass
class _Collect:
    domain: SlaDomain
    facts: list[IncidentFacts] = field(default_factory=list)
    events: int = 0

    def visit(self, groups: list[Group]) -> None:
        for _, rows, firings in groups:
            fired: list[Timer] = []
            incident, applied = replay_incident(self.domain, rows, firings, fired=fired)
            self.events += applied
            if incident is not None:
                self.facts.append(incident_facts(self.domain, incident, rows, fired))


async def compliance_report(
    dsn: str,
    domain: SlaDomain,
    since: datetime | None,
    until: datetime | None,
    *,
    severity: str | None = None,
    region: str | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
    archive: Path | None = None,
) -> Report:
    """The SLA report of the incidents reported in [since, until) (default: the whole log, to now)."""
    now = now or datetime.now(UTC)
    scope = LogScope(
        reported_since=since, reported_until=until, severity=severity, region=region, down_since=True
    )
    collect = _Collect(domain)
    with gc_paused(keep=True):
        await scan(dsn, scope, collect.visit, progress=progress, archive=archive)
    start = since or min(f.reported_at for f in collect.facts)
    report = build_report(collect.facts, start, until or now, now=now)
    report.events = collect.events
    return report


def state_json(incident: Incident, as_of: datetime | None) -> dict[str, Any]:
    """An incident's replayed state, with the pending timers already due at `as_of` marked overdue."""
    body = incident.to_json()
    for timer, data in zip(incident.timers, body["timers"], strict=True):
        data["overdue"] = as_of is not None and timer.due_at <= as_of
    return body

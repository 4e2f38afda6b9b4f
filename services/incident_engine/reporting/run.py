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
    """Every incident of a scope as the engine had it at `as_of` (None: now), from the log alone."""

    as_of: datetime | None
    incidents: dict[str, Incident] = field(default_factory=dict)
    events: int = 0
    firings: int = 0

    def visit(self, domain: SlaDomain, groups: list[Group]) -> None:
        """Replay each incident exactly (recorded firings) up to `as_of`."""
        as_of = self.as_of
        for incident_id, rows, fired in groups:
            incident, applied = replay_incident(domain, rows, fired, as_of=as_of)
            self.events += applied
            self.firings += len(fired)
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
    """Replay the scope up to `scope.processed_until`."""
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

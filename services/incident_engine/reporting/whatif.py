"""What-if: the logged events re-evaluated under another policy, compared with the policies they ran under.

Both sides are replayed on time (every timer fires at its due moment, see incident_engine.replay),
so only the policy differs between them. Warnings, breaches and failover orders are matched by what
their deterministic output ids derive from (incident, clock, cycle, kind, threshold): an id only the
shadow run emits would appear, one only the baseline emits would disappear. Nothing is written anywhere.

An incident whose severity has the same clocks and calendar under both policies cannot change
(the policy's name is all that differs in its outputs), so unless `exhaustive`, it is replayed once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from incident_contracts.constants import FAILOVER_REQUIRED, SLA_BREACHED, SLA_WARNING
from incident_contracts.envelope import OutputEvent
from incident_engine.domain import Incident, SlaDomain, Timer
from incident_engine.domain.model import BREACH, WARNING
from incident_engine.replay import replay_incident
from incident_engine.reporting.source import Group

KINDS = {SLA_WARNING: "warning", SLA_BREACHED: "breach", FAILOVER_REQUIRED: "failover"}


@dataclass(frozen=True)
class Finding:
    """One warning, breach or failover order of an incident."""

    kind: str  # warning | breach | failover
    clock: str | None  # None for a failover order (it follows the restore breach)
    threshold: float | None
    due_at: datetime

    @classmethod
    def of(cls, output: OutputEvent) -> Finding:
        """The finding an output event reports."""
        data = output.data
        return cls(KINDS[output.type], data.get("clock"), data.get("threshold"), data["due_at"])

    @classmethod
    def fired(cls, timer: Timer) -> Finding:
        """The finding of the output event a fired timer emits (= `of(timer_fired(..., timer, ...))`)."""
        kind = timer.kind
        if kind == WARNING:
            return cls("warning", timer.clock, timer.threshold, timer.due_at)
        if kind == BREACH:
            return cls("breach", timer.clock, None, timer.due_at)
        return cls("failover", None, None, timer.due_at)

    def label(self) -> str:
        """`breach restore`, `warning ack 80%`, `failover`."""
        text = self.kind if self.clock is None else f"{self.kind} {self.clock}"
        return text if self.threshold is None else f"{text} {self.threshold:.0%}"


@dataclass
class IncidentChange:
    """What the other policy changes for one incident."""

    incident_id: str
    severity: str
    region: str
    pinned: str  # the policy it ran under
    appeared: list[Finding]
    disappeared: list[Finding]


@dataclass
class WhatIf:
    """The comparison over every replayed incident; totals count findings by kind."""

    policy: str
    horizon: datetime
    incidents: int = 0
    events: int = 0
    changes: list[IncidentChange] = field(default_factory=list)
    appeared: Counter[str] = field(default_factory=Counter)
    disappeared: Counter[str] = field(default_factory=Counter)
    exhaustive: bool = False  # replay both sides even where the rules are the same
    _same: dict[tuple[str, str, str], bool] = field(default_factory=dict, repr=False)

    def visit(self, baseline: SlaDomain, shadow: SlaDomain, groups: list[Group]) -> None:
        """Replay each incident under both sides and keep what differs."""
        for incident_id, rows, _ in groups:
            before: list[Timer] = []
            after: list[Timer] = []
            incident, applied = replay_incident(baseline, rows, on_time_until=self.horizon, fired=before)
            self.events += applied
            if incident is None:
                continue
            self.incidents += 1
            if not self.exhaustive and self._same_rules(baseline, shadow, incident):
                continue
            horizon = self.horizon
            replay_incident(shadow, rows, policy_override=self.policy, on_time_until=horizon, fired=after)
            old, new = _findings(before), _findings(after)
            if old.keys() != new.keys():
                change = IncidentChange(
                    incident_id, incident.severity, incident.region, incident.policy,
                    [new[k] for k in new.keys() - old.keys()], [old[k] for k in old.keys() - new.keys()],
                )  # fmt: skip
                change.appeared.sort(key=_order)
                change.disappeared.sort(key=_order)
                self.changes.append(change)
                self.appeared.update(f.kind for f in change.appeared)
                self.disappeared.update(f.kind for f in change.disappeared)

    def _same_rules(self, baseline: SlaDomain, shadow: SlaDomain, incident: Incident) -> bool:
        key = (incident.policy, incident.severity, incident.region)
        same = self._same.get(key)
        if same is None:
            mine = baseline.policies.get(incident.policy)
            other = shadow.policies.get(self.policy)
            calendars = (p.calendar(incident.severity, incident.region) for p in (mine, other))
            old_calendar, new_calendar = calendars
            same = self._same[key] = mine.rules(incident.severity) == other.rules(incident.severity) and (
                old_calendar is new_calendar or old_calendar == new_calendar
            )
        return same

    def to_json(self) -> dict[str, Any]:
        """JSON-able summary with every changed incident."""
        return {
            "policy": self.policy,
            "horizon": self.horizon.isoformat(),
            "incidents": self.incidents,
            "events": self.events,
            "changed_incidents": len(self.changes),
            "appeared": dict(self.appeared),
            "disappeared": dict(self.disappeared),
            "changes": [
                {
                    "incident_id": c.incident_id, "severity": c.severity, "region": c.region,
                    "pinned_policy": c.pinned,
                    "appeared": [_finding_json(f) for f in c.appeared],
                    "disappeared": [_finding_json(f) for f in c.disappeared],
                }
                for c in self.changes
            ],
        }  # fmt: skip

    def failovers(self) -> list[tuple[str, Finding]]:
        """The failover orders the other policy would have added, by incident."""
        return [(c.incident_id, f) for c in self.changes for f in c.appeared if f.kind == "failover"]


def _findings(fired: list[Timer]) -> dict[tuple[str, int, str, float | None], Finding]:
    """The findings of the timers one incident fired, by what its output ids derive from: (clock, cycle,
    kind, threshold) names an output as uniquely as its id does (which costs a hash to compute)."""
    return {(t.clock, t.cycle, t.kind, t.threshold): Finding.fired(t) for t in fired}


def _order(finding: Finding) -> tuple[datetime, str]:
    return finding.due_at, finding.label()


def _finding_json(finding: Finding) -> dict[str, Any]:
    return {
        "kind": finding.kind,
        "clock": finding.clock,
        "threshold": finding.threshold,
        "due_at": finding.due_at.isoformat(),
    }

"""SLA compliance figures from incident facts: shares within SLA, time percentiles, breaches, availability.

Conventions (also printed in the report): a share is met / (met + breached), clocks still running
count in neither; percentiles interpolate linearly between ranks (median = p50); business time is
measured on the calendar of the incident's policy, severity and region (24x7 for critical).
Availability per region is 1 - downtime / period, downtime being the union of the critical
incidents' [reported, restored or failed over) intervals within the period (an open one lasts
to the end of it); `all` is the union over every region.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from incident_contracts.constants import CLOCKS, REGIONS, SEVERITIES
from incident_engine.domain.model import BREACHED, MET
from incident_engine.reporting.facts import IncidentFacts
from incident_engine.timeforms import month_of

UPTIME_COMMITMENT = 0.9999
ACK_BUCKETS = (5, 10, 15, 30, 60, 120, 240)  # minutes: upper bounds of the time-to-ack histogram
ALL = "all"


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile (0..100), linear between closest ranks; None for no value."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def duration_text(minutes: float | None) -> str:
    """A duration for people: seconds under a minute (a 1.3 s acknowledgement is not "0 min"),
    minutes under two hours, hours beyond."""
    if minutes is None:
        return "–"
    seconds = minutes * 60
    if seconds < 59.95:
        return "0 s" if seconds == 0 else f"{seconds:.1f} s" if seconds < 9.95 else f"{seconds:.0f} s"
    return f"{minutes:.0f} min" if minutes < 119.5 else f"{minutes / 60:.1f} h"


def period_label(since: datetime, until: datetime, now: datetime) -> str:
    """How a report names its period: the month when it is one, "so far" when it is not over, and
    the exact instants."""
    end, so_far = min(until, now), until > now
    if (since, until) == month_of(since):
        span = f"{since:%Y-%m-%d %H:%M} – {end:%Y-%m-%d %H:%M} UTC"
        label = f"in {since:%B %Y}{' so far' if so_far else ''} ({span})"
    else:
        label = f"from {since:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC{' (so far)' if so_far else ''}"
    return label


DEFAULT_PERIOD_NOTE = "the current month by default; choose another with --month YYYY-MM or --since/--until"


@dataclass
class Outcome:
    """Clock outcomes of one kind (ack or restore) over a group of incidents."""

    met: int = 0
    breached: int = 0
    running: int = 0

    def add(self, status: str | None) -> None:
        """Count one clock outcome (None: the incident has no such clock)."""
        if status == MET:
            self.met += 1
        elif status == BREACHED:
            self.breached += 1
        elif status is not None:
            self.running += 1

    @property
    def share(self) -> float | None:
        """Share within SLA of the decided clocks."""
        decided = self.met + self.breached
        return self.met / decided if decided else None


@dataclass
class GroupStats:
    """The figures of one (severity, region) group; `all` stands for every value of a dimension."""

    severity: str
    region: str
    incidents: int = 0
    ack: Outcome = field(default_factory=Outcome)
    restore: Outcome = field(default_factory=Outcome)
    ack_wall: list[float] = field(default_factory=list)  # minutes
    ack_business: list[float] = field(default_factory=list)
    restore_wall: list[float] = field(default_factory=list)
    restore_business: list[float] = field(default_factory=list)
    breaches: Counter[str] = field(default_factory=Counter)
    failovers_ordered: int = 0
    failed_over: int = 0

    def add(self, facts: IncidentFacts) -> None:
        """Count one incident in."""
        self.incidents += 1
        self.ack.add(facts.ack_status)
        self.restore.add(facts.restore_status)
        for values, delta in (
            (self.ack_wall, facts.ack_wall), (self.ack_business, facts.ack_business),
            (self.restore_wall, facts.restore_wall), (self.restore_business, facts.restore_business),
        ):  # fmt: skip
            if delta is not None:
                values.append(delta.total_seconds() / 60)
        self.breaches.update(facts.breaches)
        self.failovers_ordered += facts.failovers_ordered
        self.failed_over += facts.failed_over

    def to_json(self) -> dict[str, Any]:
        """The group's figures (times in minutes, shares as fractions, None where undefined)."""
        times = {}
        for name in ("ack_wall", "ack_business", "restore_wall", "restore_business"):
            values = getattr(self, name)
            times[name] = {
                "count": len(values),
                "median": percentile(values, 50),
                "p90": percentile(values, 90),
            }
        return {
            "severity": self.severity, "region": self.region, "incidents": self.incidents,
            "ack": {"met": self.ack.met, "breached": self.ack.breached, "running": self.ack.running,
                    "share_within_sla": self.ack.share},
            "restore": {"met": self.restore.met, "breached": self.restore.breached,
                        "running": self.restore.running, "share_within_sla": self.restore.share},
            "minutes": times,
            "breaches": {clock: self.breaches.get(clock, 0) for clock in CLOCKS},
            "failovers_ordered": self.failovers_ordered, "failed_over": self.failed_over,
        }  # fmt: skip


@dataclass
class Availability:
    """Downtime of critical incidents in the period against the uptime commitment."""

    region: str
    period: timedelta
    downtime: timedelta

    @property
    def ratio(self) -> float:
        """Share of the period the service was up."""
        return 1 - self.downtime / self.period if self.period else 1.0

    @property
    def allowed(self) -> timedelta:
        """Downtime the commitment allows in the period."""
        return self.period * (1 - UPTIME_COMMITMENT)

    @property
    def met(self) -> bool:
        """True when the commitment is kept."""
        return self.ratio >= UPTIME_COMMITMENT

    def to_json(self) -> dict[str, Any]:
        """JSON-able figures (minutes)."""
        return {
            "region": self.region, "availability": self.ratio, "commitment": UPTIME_COMMITMENT,
            "met": self.met, "downtime_minutes": self.downtime.total_seconds() / 60,
            "allowed_minutes": self.allowed.total_seconds() / 60,
        }  # fmt: skip


def downtime(intervals: Iterable[tuple[datetime, datetime]], start: datetime, end: datetime) -> timedelta:
    """Length of the union of intervals, clipped to [start, end)."""
    total, reach = timedelta(0), start
    for begin, finish in sorted(intervals):
        begin, finish = max(begin, reach), min(finish, end)
        if finish > begin:
            total += finish - begin
            reach = finish
    return total


@dataclass
class Report:
    """SLA compliance over the incidents reported in [since, until)."""

    since: datetime
    until: datetime
    generated_at: datetime
    groups: list[GroupStats]
    availability: list[Availability]
    weekly: list[dict[str, Any]]  # week, incidents, ack share, restore share
    ack_histogram: dict[str, list[int]]  # severity -> counts per ACK_BUCKETS bucket (+ one beyond)
    breaches_per_clock: dict[str, int]
    events: int = 0
    period: str = ""  # how the period is named (`period_label`); set by who chose it
    period_note: str = ""  # how it was chosen, when not by the user (e.g. DEFAULT_PERIOD_NOTE)

    def period_text(self) -> str:
        """The period's name, or the plain instants."""
        return self.period or period_label(self.since, self.until, self.generated_at)

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON-able data."""
        return {
            "since": self.since.isoformat(), "until": self.until.isoformat(), "period": self.period_text(),
            "period_note": self.period_note,
            "generated_at": self.generated_at.isoformat(), "events_replayed": self.events,
            "groups": [g.to_json() for g in self.groups],
            "availability": [a.to_json() for a in self.availability],
            "weekly": self.weekly, "ack_histogram_minutes": list(ACK_BUCKETS),
            "ack_histogram": self.ack_histogram, "breaches_per_clock": self.breaches_per_clock,
        }  # fmt: skip


def build_report(
    facts: Iterable[IncidentFacts], since: datetime, until: datetime, *, now: datetime | None = None
) -> Report:
    """Aggregate incident facts: incidents reported in [since, until) count; the critical ones
    reported before `since` count only for downtime inside the period."""
    now = now or datetime.now(UTC)
    end = min(until, now)
    groups: dict[tuple[str, str], GroupStats] = {}
    down: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    weeks: dict[str, list[Outcome]] = defaultdict(lambda: [Outcome(), Outcome()])
    histogram = {severity: [0] * (len(ACK_BUCKETS) + 1) for severity in SEVERITIES}
    for f in facts:
        if f.severity == "critical":
            down[f.region].append((f.reported_at, f.restored_at or end))
        if not since <= f.reported_at < until:
            continue
        for key in ((f.severity, f.region), (f.severity, ALL), (ALL, ALL)):
            if key not in groups:
                groups[key] = GroupStats(*key)
            groups[key].add(f)
        week = weeks[_week(f.reported_at)]
        week[0].add(f.ack_status)
        week[1].add(f.restore_status)
        if f.ack_wall is not None:
            minutes = f.ack_wall.total_seconds() / 60
            histogram[f.severity][sum(1 for bound in ACK_BUCKETS if minutes > bound)] += 1
    period = max(end - since, timedelta(0))
    availability = [Availability(region, period, downtime(down[region], since, end)) for region in REGIONS]
    every = [interval for region in REGIONS for interval in down[region]]
    availability.append(Availability(ALL, period, downtime(every, since, end)))
    overall = groups.get((ALL, ALL))
    return Report(
        since=since, until=until, generated_at=now, groups=sorted(groups.values(), key=_group_order),
        availability=availability,
        weekly=[
            {"week": week, "ack_share": ack.share, "restore_share": restore.share,
             "decided": ack.met + ack.breached}
            for week, (ack, restore) in sorted(weeks.items())
        ],
        ack_histogram=histogram,
        breaches_per_clock={c: overall.breaches.get(c, 0) if overall else 0 for c in CLOCKS},
    )  # fmt: skip


def _week(moment: datetime) -> str:
    year, week, _ = moment.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def _group_order(group: GroupStats) -> tuple[int, int]:
    severities, regions = (*SEVERITIES, ALL), (*REGIONS, ALL)
    return severities.index(group.severity), regions.index(group.region)

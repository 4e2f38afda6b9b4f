"""Terminal renderings (rich tables) of an as-of state, a what-if and an SLA report."""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from rich.console import Console
from rich.table import Table

from incident_contracts.constants import STATES
from incident_engine.domain import Incident
from incident_engine.reporting.compliance import UPTIME_COMMITMENT, Report, percentile
from incident_engine.reporting.whatif import WhatIf


def _when(moment: datetime | None) -> str:
    return "–" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def print_incident(out: Console, incident: Incident, as_of: datetime | None) -> None:
    """One incident in detail: state, clocks, pending timers."""
    out.print(
        f"[bold]{incident.id}[/bold]  state [bold]{incident.state}[/bold]  policy {incident.policy}  "
        f"{incident.severity}/{incident.region}  reported {_when(incident.reported_at)}  "
        f"last event {_when(incident.last_event_at)}  events {incident.seq}"
    )
    clocks = Table(
        "clock", "cycle", "started", "due", "stopped", "status", title="clocks", title_justify="left"
    )
    for name, clock in incident.clocks.items():
        clocks.add_row(
            name, str(clock.cycle), _when(clock.started_at), _when(clock.due_at), _when(clock.stopped_at),
            clock.status,
        )  # fmt: skip
    out.print(clocks)
    timers = Table("due", "clock", "kind", "threshold", "", title="pending timers", title_justify="left")
    for timer in incident.timers:
        overdue = as_of is not None and timer.due_at <= as_of
        threshold = "" if timer.threshold is None else f"{timer.threshold:.0%}"
        timers.add_row(_when(timer.due_at), timer.clock, timer.kind, threshold, "overdue" if overdue else "")
    out.print(timers if incident.timers else "no pending timer")


def print_states(out: Console, incidents: dict[str, Incident], as_of: datetime | None, limit: int) -> None:
    """Counts by state, then the open incidents (first `limit`) with their next timer."""
    label = f"as of {_when(as_of)} UTC" if as_of else "now"
    counts = Counter(i.state for i in incidents.values())
    out.print(f"{len(incidents):,} incidents {label}: " + ", ".join(f"{s} {counts[s]:,}" for s in STATES))
    open_ = [i for i in incidents.values() if i.state != "restored"]
    table = Table("incident", "state", "policy", "severity", "region", "reported", "clocks", "next timer")
    for incident in sorted(open_, key=lambda i: i.reported_at)[:limit]:
        clocks = " ".join(f"{n}:{c.status}" for n, c in incident.clocks.items())
        nxt = incident.timers[0] if incident.timers else None
        due = f"{nxt.clock} {nxt.kind} {_when(nxt.due_at)}" if nxt else "–"
        table.add_row(incident.id, incident.state, incident.policy, incident.severity, incident.region,
                      _when(incident.reported_at), clocks, due)  # fmt: skip
    if open_:
        out.print(table)
        if len(open_) > limit:
            out.print(f"… and {len(open_) - limit:,} more open incidents (--limit, or --format json)")


def print_what_if(out: Console, result: WhatIf, limit: int) -> None:
    """Totals, then the changed incidents (first `limit`)."""
    out.print(
        f"what-if under [bold]{result.policy}[/bold]: {result.incidents:,} incidents, "
        f"{result.events:,} events replayed (timers on time up to {_when(result.horizon)} UTC); "
        f"{len(result.changes):,} would change"
    )
    totals = Table("", "warnings", "breaches", "failovers", title="in total", title_justify="left")
    for label, counts in (("would appear", result.appeared), ("would disappear", result.disappeared)):
        totals.add_row(label, *(str(counts.get(k, 0)) for k in ("warning", "breach", "failover")))
    out.print(totals)
    if not result.changes:
        out.print("[green]no difference[/green]")
        return
    table = Table("incident", "severity/region", "ran under", "would appear", "would disappear")
    for change in result.changes[:limit]:
        table.add_row(
            change.incident_id, f"{change.severity}/{change.region}", change.pinned,
            "\n".join(f"{f.label()} (due {_when(f.due_at)})" for f in change.appeared) or "–",
            "\n".join(f"{f.label()} (due {_when(f.due_at)})" for f in change.disappeared) or "–",
        )  # fmt: skip
    out.print(table)
    if len(result.changes) > limit:
        out.print(f"… and {len(result.changes) - limit:,} more changed incidents (--limit, or --format json)")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _mins(values: list[float]) -> str:
    median, p90 = percentile(values, 50), percentile(values, 90)
    return "–" if median is None or p90 is None else f"{median:.0f} / {p90:.0f}"


def print_report(out: Console, report: Report) -> None:
    """The groups table and the availability table."""
    out.print(
        f"SLA compliance of incidents reported {_when(report.since)} – {_when(report.until)} UTC "
        f"({report.events:,} logged events replayed)"
    )
    table = Table(
        "severity", "region", "incidents", "ack in SLA", "restore in SLA", "ack min p50/p90",
        "ack biz min", "restore min p50/p90", "restore biz min", "breaches a/rs/rv/u", "failovers",
    )  # fmt: skip
    for g in report.groups:
        b = g.breaches
        table.add_row(
            g.severity, g.region, str(g.incidents), _pct(g.ack.share), _pct(g.restore.share),
            _mins(g.ack_wall), _mins(g.ack_business), _mins(g.restore_wall), _mins(g.restore_business),
            f"{b['ack']}/{b['restore']}/{b['resolution']}/{b['update']}", str(g.failovers_ordered),
        )  # fmt: skip
    out.print(table)
    avail = Table("region", "availability", "downtime min", "allowed min", f"{UPTIME_COMMITMENT:.2%}")
    for a in report.availability:
        avail.add_row(
            a.region, f"{a.ratio:.4%}", f"{a.downtime.total_seconds() / 60:.1f}",
            f"{a.allowed.total_seconds() / 60:.1f}", "[green]met[/green]" if a.met else "[red]missed[/red]",
        )  # fmt: skip
    out.print(avail)

"""Terminal renderings (rich tables) of an as-of state, a what-if and an SLA report.

No table is ever cut: into a pipe or a file a table is printed at its full width (rich would assume 80
columns and end cells in an ellipsis); in a terminal too narrow for it, each row becomes one paragraph
of "header value" pairs. `--format json` gives every figure unformatted."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from incident_contracts.constants import STATES
from incident_engine.domain import Incident
from incident_engine.reporting.compliance import UPTIME_COMMITMENT, Report, duration_text, percentile
from incident_engine.reporting.whatif import WhatIf


def _when(moment: datetime | None) -> str:
    return "–" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


class Rows:
    """A table to print whole (see `print_rows`): its headers, options and rows of text cells."""

    def __init__(self, *headers: str, **options: Any) -> None:
        self.headers, self.options = headers, options
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: str) -> None:
        """One row, a cell per header (rich markup allowed)."""
        self.rows.append(cells)


def print_rows(out: Console, rows: Rows) -> None:
    """Print a table whole: at its natural width when it fits or when the output is not a terminal (a
    pipe or a file has no width to respect), else, in a terminal too narrow for it, each row as one
    paragraph of "header value" pairs that the terminal wraps. Never a cell cut with an ellipsis."""
    table = Table(*rows.headers, **rows.options)
    for row in rows.rows:
        table.add_row(*row)
    natural = Measurement.get(out, out.options.update_width(100_000), table).maximum
    if natural <= out.width:
        out.print(table)
    elif not out.is_terminal:
        width = out.width
        out.width = natural
        try:
            out.print(table)
        finally:
            out.width = width
    else:
        if title := rows.options.get("title"):
            out.print(f"{title}:")
        for row in rows.rows:
            pairs = [f"{h} {c}".strip() for h, c in zip(rows.headers[1:], row[1:], strict=True)]
            out.print(f"[bold]{row[0]}[/bold]: " + " · ".join(pairs).replace("\n", "; "))


def _as_of_label(as_of: datetime | None, basis: str) -> str:
    return "now" if as_of is None else f"as of {_when(as_of)} UTC" + (f" ({basis})" if basis else "")


def print_incident(out: Console, incident: Incident, as_of: datetime | None, basis: str = "") -> None:
    """One incident in detail: state, clocks, pending timers (`basis`: event or processing time)."""
    out.print(
        f"[bold]{incident.id}[/bold] {_as_of_label(as_of, basis)}:  state [bold]{incident.state}[/bold]  "
        f"policy {incident.policy}  "
        f"{incident.severity}/{incident.region}  reported {_when(incident.reported_at)}  "
        f"last event {_when(incident.last_event_at)}  events {incident.seq}"
    )
    clocks = Rows(
        "clock", "cycle", "started", "due", "stopped", "status", title="clocks", title_justify="left"
    )
    for name, clock in incident.clocks.items():
        clocks.add_row(
            name, str(clock.cycle), _when(clock.started_at), _when(clock.due_at), _when(clock.stopped_at),
            clock.status,
        )  # fmt: skip
    print_rows(out, clocks)
    timers = Rows("due", "clock", "kind", "threshold", "", title="pending timers", title_justify="left")
    for timer in incident.timers:
        overdue = as_of is not None and timer.due_at <= as_of
        threshold = "" if timer.threshold is None else f"{timer.threshold:.0%}"
        timers.add_row(_when(timer.due_at), timer.clock, timer.kind, threshold, "overdue" if overdue else "")
    if incident.timers:
        print_rows(out, timers)
    else:
        out.print("no pending timer")


def print_states(
    out: Console, incidents: dict[str, Incident], as_of: datetime | None, limit: int, basis: str = ""
) -> None:
    """Counts by state, then the open incidents (first `limit`) with their next timer."""
    label = _as_of_label(as_of, basis)
    counts = Counter(i.state for i in incidents.values())
    out.print(f"{len(incidents):,} incidents {label}: " + ", ".join(f"{s} {counts[s]:,}" for s in STATES))
    open_ = [i for i in incidents.values() if i.state != "restored"]
    table = Rows("incident", "state", "policy", "severity", "region", "reported", "clocks", "next timer")
    for incident in sorted(open_, key=lambda i: i.reported_at)[:limit]:
        clocks = " ".join(f"{n}:{c.status}" for n, c in incident.clocks.items())
        nxt = incident.timers[0] if incident.timers else None
        due = f"{nxt.clock} {nxt.kind} {_when(nxt.due_at)}" if nxt else "–"
        table.add_row(incident.id, incident.state, incident.policy, incident.severity, incident.region,
                      _when(incident.reported_at), clocks, due)  # fmt: skip
    if open_:
        print_rows(out, table)
        if len(open_) > limit:
            out.print(f"… and {len(open_) - limit:,} more open incidents (--limit, or --format json)")


def print_what_if(out: Console, result: WhatIf, limit: int) -> None:
    """Totals, then the changed incidents (first `limit`)."""
    out.print(
        f"what-if under [bold]{result.policy}[/bold]: {result.incidents:,} incidents, "
        f"{result.events:,} events replayed (timers on time up to {_when(result.horizon)} UTC); "
        f"{len(result.changes):,} would change"
    )
    totals = Rows("", "warnings", "breaches", "failovers", title="in total", title_justify="left")
    for label, counts in (("would appear", result.appeared), ("would disappear", result.disappeared)):
        totals.add_row(label, *(str(counts.get(k, 0)) for k in ("warning", "breach", "failover")))
    print_rows(out, totals)
    if not result.changes:
        out.print("[green]no difference[/green]")
        return
    table = Rows("incident", "severity/region", "ran under", "would appear", "would disappear")
    for change in result.changes[:limit]:
        table.add_row(
            change.incident_id, f"{change.severity}/{change.region}", change.pinned,
            "\n".join(f"{f.label()} (due {_when(f.due_at)})" for f in change.appeared) or "–",
            "\n".join(f"{f.label()} (due {_when(f.due_at)})" for f in change.disappeared) or "–",
        )  # fmt: skip
    print_rows(out, table)
    if len(result.changes) > limit:
        out.print(f"… and {len(result.changes) - limit:,} more changed incidents (--limit, or --format json)")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _times(values: list[float]) -> str:
    median, p90 = percentile(values, 50), percentile(values, 90)
    return "–" if median is None or p90 is None else f"{duration_text(median)} / {duration_text(p90)}"


REPORT_LEGEND = (
    "in SLA: share of the decided clocks (met or breached) that were met; running ones count in neither.",
    "p50/p90: median / 90th percentile time from report to acknowledgement (ack) or to service back"
    " (restore: restored or failed over); biz: the same in business time (the policy's calendar;"
    " 24x7 for critical).",
    "breaches a/rs/rv/u: breaches of the ack / restore / resolution / update clocks;"
    " failovers: incident.failover.required orders.",
    "availability: 1 - downtime / the period so far; downtime: critical incidents from reported to"
    " restored or failed over, overlaps counted once; allowed: what the commitment allows in that time.",
)


REPORT_COLUMNS = (
    "severity", "region", "incidents", "ack in SLA", "restore in SLA", "ack p50/p90", "ack biz p50/p90",
    "restore p50/p90", "restore biz p50/p90", "breaches a/rs/rv/u", "failovers",
)  # fmt: skip


def print_report(out: Console, report: Report) -> None:
    """The period, the groups table, the availability table and a legend of the abbreviations."""
    out.print(
        f"SLA compliance of the incidents reported {report.period_text()}, "
        f"{report.events:,} logged events replayed"
    )
    if report.period_note:
        out.print(f"({report.period_note})")
    table = Rows(*REPORT_COLUMNS)
    for g in report.groups:
        b = g.breaches
        table.add_row(
            g.severity, g.region, str(g.incidents), _pct(g.ack.share), _pct(g.restore.share),
            _times(g.ack_wall), _times(g.ack_business), _times(g.restore_wall), _times(g.restore_business),
            f"{b['ack']}/{b['restore']}/{b['resolution']}/{b['update']}", str(g.failovers_ordered),
        )  # fmt: skip
    if table.rows:
        print_rows(out, table)
    else:
        out.print("no incident reported in the period")
    avail = Rows("region", "availability", "downtime", "allowed", f"{UPTIME_COMMITMENT:.2%} commitment")
    for a in report.availability:
        avail.add_row(
            a.region, f"{a.ratio:.4%}", duration_text(a.downtime.total_seconds() / 60),
            duration_text(a.allowed.total_seconds() / 60),
            "[green]met[/green]" if a.met else "[red]missed[/red]",
        )  # fmt: skip
    print_rows(out, avail)
    out.print("\n".join(REPORT_LEGEND), style="dim")

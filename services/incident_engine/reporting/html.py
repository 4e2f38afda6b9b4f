"""The SLA report as one self-contained HTML page: inline CSS and SVG charts, nothing fetched."""

from __future__ import annotations

from html import escape
from typing import Any

from incident_engine.reporting.compliance import ACK_BUCKETS, ALL, UPTIME_COMMITMENT, Report, duration_text
from incident_engine.reporting.svg import bar_chart, line_chart

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;
color:#0f172a;background:#f8fafc;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}.muted{color:#64748b}
.cards{display:grid;grid-template-columns:repeat(6,1fr);gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:12px 16px}
.card b{display:block;font-size:24px}
.ok{color:#047857}.bad{color:#b91c1c}.charts{display:grid;grid-template-columns:1fr 1fr;gap:16px}
.charts figure:first-child{grid-column:1/-1}
figure{background:#fff;border:1px solid #e2e8f0;border-radius:8px;margin:0;padding:8px;min-width:0}
figure svg{display:block;width:100%;height:auto;max-height:320px}
@media (max-width:1000px){.cards{grid-template-columns:repeat(3,1fr)}.charts{grid-template-columns:1fr}}
@media (max-width:560px){.cards{grid-template-columns:repeat(2,1fr)}}
.scroll{overflow-x:auto}
figcaption{font-weight:600;padding:4px 8px}table{border-collapse:collapse;background:#fff;width:100%}
th,td{border:1px solid #e2e8f0;padding:4px 8px;text-align:right}td{white-space:nowrap}th{background:#f1f5f9}
td:first-child,th:first-child,.groups td:nth-child(2),.groups th:nth-child(2){text-align:left}
tr.total td{font-weight:600}
svg .grid{stroke:#e2e8f0}svg .target{stroke:#b91c1c;stroke-dasharray:4 3}
svg text{font:11px system-ui,sans-serif;fill:#334155}
"""


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:.{digits}f}%"


def _cards(report: Report) -> str:
    overall = next((g for g in report.groups if g.severity == ALL and g.region == ALL), None)
    uptime = next(a for a in report.availability if a.region == ALL)
    cards = [
        ("Availability", _pct(uptime.ratio, 3), uptime.met, f"commitment {_pct(UPTIME_COMMITMENT, 2)}"),
        ("Incidents", str(overall.incidents if overall else 0), None, "reported in the period"),
        ("Acknowledged within SLA", _pct(overall.ack.share if overall else None), None, ""),
        ("Restored/resolved within SLA", _pct(overall.restore.share if overall else None), None, ""),
        ("Breaches", str(sum(report.breaches_per_clock.values())), None, "all clocks"),
        ("Failovers ordered", str(overall.failovers_ordered if overall else 0), None, ""),
    ]
    html = []
    for title, value, good, note in cards:
        css = "" if good is None else (' class="ok"' if good else ' class="bad"')
        html.append(
            f'<div class="card"><span class="muted">{escape(title)}</span><b{css}>{escape(value)}</b>'
            f'<span class="muted">{escape(note)}</span></div>'
        )
    return '<div class="cards">' + "".join(html) + "</div>"


def _charts(report: Report) -> str:
    weeks = [w["week"] for w in report.weekly]
    weekly = line_chart(
        "Compliance per week",
        weeks,
        [
            ("acknowledged in SLA", [w["ack_share"] for w in report.weekly]),
            ("restored in SLA", [w["restore_share"] for w in report.weekly]),
        ],
        top=1.0,
        fmt=lambda v: f"{v * 100:.0f}%",
        target=1.0,
    )
    buckets = [f"≤{b}" for b in ACK_BUCKETS] + [f">{ACK_BUCKETS[-1]}"]
    ack = bar_chart(
        "Time to acknowledge (minutes)",
        buckets,
        [(severity, counts) for severity, counts in report.ack_histogram.items()],
        stacked=True,
    )
    clocks = list(report.breaches_per_clock)
    breaches = bar_chart(
        "Breaches per clock", clocks, [("breaches", list(report.breaches_per_clock.values()))]
    )
    figures = [
        ("Compliance per week", weekly),
        ("Time to acknowledge, by severity (minutes)", ack),
        ("Breaches per clock", breaches),
    ]
    return (
        '<div class="charts">'
        + "".join(
            f"<figure><figcaption>{escape(caption)}</figcaption>{svg}</figure>" for caption, svg in figures
        )
        + "</div>"
    )


def _groups_table(report: Report) -> str:
    head = (
        "<tr><th>Severity</th><th>Region</th><th>Incidents</th><th>Ack in SLA</th><th>Restore in SLA</th>"
        "<th>Ack median / p90</th><th>Ack business median / p90</th><th>Restore median / p90</th>"
        "<th>Restore business median / p90</th><th>Breaches ack / restore / resolution / update</th>"
        "<th>Failovers ordered</th></tr>"
    )
    rows = []
    for group in report.groups:
        figures: dict[str, Any] = group.to_json()["minutes"]
        times = [
            f"{duration_text(figures[k]['median'])} / {duration_text(figures[k]['p90'])}"
            for k in ("ack_wall", "ack_business", "restore_wall", "restore_business")
        ]
        b = group.breaches
        css = ' class="total"' if ALL in (group.severity, group.region) else ""
        cells = [
            group.severity, group.region, str(group.incidents),
            _pct(group.ack.share), _pct(group.restore.share), *times,
            f"{b['ack']}/{b['restore']}/{b['resolution']}/{b['update']}", str(group.failovers_ordered),
        ]  # fmt: skip
        rows.append(f"<tr{css}>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>")
    return f"<table class='groups'>{head}{''.join(rows)}</table>"


def _availability_table(report: Report) -> str:
    rows = []
    for a in report.availability:
        css = "ok" if a.met else "bad"
        rows.append(
            f"<tr><td>{escape(a.region)}</td><td class='{css}'>{_pct(a.ratio, 4)}</td>"
            f"<td>{duration_text(a.downtime.total_seconds() / 60)}</td>"
            f"<td>{duration_text(a.allowed.total_seconds() / 60)}</td>"
            f"<td class='{css}'>{'met' if a.met else 'missed'}</td></tr>"
        )
    head = (
        "<tr><th>Region</th><th>Availability</th><th>Downtime</th><th>Allowed</th>"
        f"<th>{_pct(UPTIME_COMMITMENT, 2)} commitment</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def render_html(report: Report) -> str:
    """The whole page."""
    period = report.period_text()
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>SLA compliance {escape(period)}</title><style>{_CSS}</style></head><body>"
        f"<h1>SLA compliance</h1><div class='muted'>Incidents reported {escape(period)} · "
        f"{report.events:,} logged events replayed · generated {report.generated_at:%Y-%m-%d %H:%M} UTC"
        + (f"<br>({escape(report.period_note)})" if report.period_note else "")
        + "</div>"
        + _cards(report)
        + _charts(report)
        + "<h2>Per severity and region</h2>"
        + f"<div class='scroll'>{_groups_table(report)}</div>"
        + "<h2>Availability against the 99.99% uptime commitment</h2>"
        + f"<div class='scroll'>{_availability_table(report)}</div>"
        + "<p class='muted'>Shares count decided clocks (met or breached); clocks still running count in"
        " neither. Percentiles interpolate between ranks. Business time follows each incident's policy"
        " calendar. Downtime: critical incidents from reported to restored or failed over, overlaps"
        " counted once.</p></body></html>"
    )

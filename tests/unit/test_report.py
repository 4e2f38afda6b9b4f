"""Pure parts of replay and reporting: replay modes, percentiles, downtime unions, dates, SVG, HTML."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from incident_engine import timeforms
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.replay import rebuild, replay_incident
from incident_engine.replay_cli import parse_instant, parse_month
from incident_engine.reporting.compliance import (
    DEFAULT_PERIOD_NOTE,
    Report,
    build_report,
    downtime,
    duration_text,
    percentile,
    period_label,
)
from incident_engine.reporting.facts import IncidentFacts
from incident_engine.reporting.html import render_html
from incident_engine.reporting.seed import LOG_COLUMNS, record_history
from incident_engine.reporting.svg import bar_chart, line_chart, nice_top
from incident_engine.reporting.text import print_report
from incident_engine.timeforms import month_of

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 5, 10, 0, tzinfo=UTC)  # a Wednesday, London = UTC


def _event(number: int, incident: str, kind: str, at: datetime, **data: str) -> dict[str, object]:
    return {"specversion": "1.0", "id": f"u-{number}", "source": "/channels/test", "type": f"incident.{kind}",
            "subject": incident, "time": at, "data": data or None}  # fmt: skip


def _history() -> list[dict[str, object]]:
    return [
        _event(1, "A", "reported", T0, severity="critical", region="uk", summary="down"),
        _event(2, "A", "acknowledged", T0 + timedelta(minutes=20)),  # after the ack breach
        _event(3, "A", "restored", T0 + timedelta(minutes=50)),  # after restore breach and failover
        _event(4, "B", "reported", T0, severity="low", region="uk", summary="slow"),
        _event(5, "B", "acknowledged", T0 + timedelta(minutes=5)),  # update clock runs: 12 business h
    ]


def _rows(log_rows: list[tuple[object, ...]]) -> list[dict[str, object]]:
    return [dict(zip(LOG_COLUMNS, row, strict=True)) for row in log_rows]


def test_exact_replay_of_an_on_time_log_reproduces_the_engine_state() -> None:
    domain = SlaDomain(PolicyRegistry.load())
    log = record_history(domain, _history(), T0 + timedelta(days=3))
    firings = [(incident, moment) for incident, moment, _ in log.firings]
    rebuilt = rebuild(SlaDomain(PolicyRegistry.load()), _rows(log.rows), firings)
    assert {i: inc.to_json() for i, inc in rebuilt.incidents.items()} == {
        i: inc.to_json() for i, inc in log.incidents.items()
    }
    assert rebuilt.events == 5


def test_as_of_keeps_a_due_but_unfired_timer_pending() -> None:
    domain = SlaDomain(PolicyRegistry.load())
    log = record_history(domain, _history()[:1], T0)  # reported, nothing fired yet
    at = T0 + timedelta(minutes=16)  # the ack breach was due at 10:15, but no firing is recorded
    state = rebuild(domain, _rows(log.rows), [], as_of=at).incidents["A"]
    assert state.clocks["ack"].status == "running" and state.timers[0].due_at <= at


def test_on_time_replay_fires_timers_at_their_due_moments() -> None:
    domain = SlaDomain(PolicyRegistry.load())
    log = record_history(domain, _history(), T0 + timedelta(days=3))
    steps = [(row[6], row[9]) for row in log.rows if row[0] == "A"]
    outputs: list = []
    incident, applied = replay_incident(domain, steps, on_time_until=T0 + timedelta(days=3), outputs=outputs)
    assert incident is not None and applied == 3
    fired = [
        (o.type.rsplit(".", 1)[1], o.time - T0) for o in outputs if "sla" in o.type or "failover" in o.type
    ]
    assert ("breached", timedelta(minutes=15)) in fired  # emitted at the due moment, not at the next event
    assert ("required", timedelta(minutes=30)) in fired


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 90) == 7.0
    assert percentile([5, 5, 10, 20], 50) == 7.5
    assert percentile([20, 5, 10, 5], 90) == pytest.approx(17.0)


def test_downtime_is_the_union_clipped_to_the_period() -> None:
    start, end = T0, T0 + timedelta(hours=10)
    spans = [
        (T0 - timedelta(hours=1), T0 + timedelta(minutes=30)),  # 30 min inside
        (T0 + timedelta(hours=1), T0 + timedelta(hours=2)),
        (T0 + timedelta(hours=1, minutes=30), T0 + timedelta(hours=3)),  # overlaps: 2 h together
        (T0 + timedelta(hours=9), T0 + timedelta(hours=12)),  # 1 h inside
    ]
    assert downtime(spans, start, end) == timedelta(hours=3, minutes=30)


def test_dates_and_months_parse_or_explain() -> None:
    assert parse_instant("2025-03-04", "--as-of") == datetime(2025, 3, 4, tzinfo=UTC)
    assert parse_instant("2025-03-04T21:30+11:00", "--as-of") == datetime(2025, 3, 4, 10, 30, tzinfo=UTC)
    assert parse_instant("2025-03-04T10:30:00Z", "--as-of") == datetime(2025, 3, 4, 10, 30, tzinfo=UTC)
    assert parse_month("2025-12") == (datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC))
    with pytest.raises(typer.BadParameter, match="not a date or time"):
        parse_instant("next friday", "--as-of")
    with pytest.raises(typer.BadParameter, match="not a month"):
        parse_month("2025-3")


def test_charts_are_well_formed_svg_with_round_ticks() -> None:
    assert [nice_top(x) for x in (0, 3, 7, 9299, 10006)] == [4, 4, 8, 10000, 20000]
    bars = bar_chart("b", ["x", "y"], [("one", [1, 2]), ("two", [3, None])], stacked=True)
    lines = line_chart("l", ["w1", "w2", "w3"], [("s", [0.5, None, 1.0])], top=1.0, target=1.0)
    for svg in (bars, lines):
        root = ET.fromstring(svg)
        assert root.tag.endswith("svg")
    assert bars.count("<rect") == 2 + 3  # two legend keys, three bars: nothing is drawn for a None


def test_html_page_is_self_contained() -> None:
    facts = [
        IncidentFacts("A", "critical", "uk", "livepro-1", T0, T0 + timedelta(minutes=5),
                      T0 + timedelta(minutes=20), ack_status="met", restore_clock="restore",
                      restore_status="met"),
    ]  # fmt: skip
    report = build_report(facts, T0 - timedelta(days=1), T0 + timedelta(days=6), now=T0 + timedelta(days=10))
    page = render_html(report)
    assert page.startswith("<!doctype html>") and page.count("<svg") == 3
    assert "<script" not in page and "src=" not in page and "@import" not in page
    assert report.availability[-1].downtime == timedelta(minutes=20)


def _new_install_report() -> Report:
    """A new install: one critical incident this month, acknowledged in 1.3 s, restored after 40 min."""
    t0 = datetime(2026, 11, 30, 2, 30, tzinfo=UTC)
    facts = IncidentFacts("INC-1", "critical", "au", "livepro-1", t0, t0 + timedelta(seconds=1.3),
                          t0 + timedelta(minutes=40), ack_status="met", restore_clock="restore",
                          restore_status="breached", ack_business=timedelta(seconds=1.3),
                          restore_business=timedelta(minutes=40), failovers_ordered=1)  # fmt: skip
    facts.breaches["restore"] += 1
    now = t0 + timedelta(hours=1)
    since, until = month_of(now)
    report = build_report([facts], since, until, now=now)
    report.period, report.period_note = period_label(since, until, now), DEFAULT_PERIOD_NOTE
    return report


def test_durations_show_seconds_under_a_minute() -> None:
    assert [duration_text(m) for m in (None, 0, 1.3 / 60, 45 / 60, 1, 40, 119, 790)] == [
        "–", "0 s", "1.3 s", "45 s", "1 min", "40 min", "119 min", "13.2 h",
    ]  # fmt: skip


def test_period_labels_say_the_month_and_so_far() -> None:
    now = datetime(2026, 11, 30, 3, 30, tzinfo=UTC)
    this = month_of(now)
    assert period_label(*this, now) == "in November 2026 so far (2026-11-01 00:00 – 2026-11-30 03:30 UTC)"
    assert period_label(*month_of(datetime(2026, 2, 3, tzinfo=UTC)), now) == (
        "in February 2026 (2026-02-01 00:00 – 2026-03-01 00:00 UTC)"
    )
    window = (datetime(2026, 3, 3, tzinfo=UTC), datetime(2026, 3, 10, 12, tzinfo=UTC))
    assert period_label(*window, now) == "from 2026-03-03 00:00 to 2026-03-10 12:00 UTC"


@pytest.mark.parametrize("terminal", [True, False])
@pytest.mark.parametrize("width", [40, 80, 250])
def test_report_table_is_never_cut_and_explains_its_abbreviations(terminal: bool, width: int) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=terminal, color_system=None, soft_wrap=True)
    print_report(console, _new_install_report())
    text = buffer.getvalue()
    assert "…" not in text and "..." not in text
    assert "in November 2026 so far (2026-11-01 00:00 – 2026-11-30 03:30 UTC)" in text
    assert DEFAULT_PERIOD_NOTE in text
    # every figure whole, on one line: a table at its full width (a pipe, a wide terminal) or one
    # paragraph per group (a narrow terminal)
    for figure in ("1.3 s / 1.3 s", "40 min / 40 min", "0/1/0/0", "99.9047%", "100.0%"):
        assert figure in text, (figure, text)
    assert ("critical: region au · incidents 1" in text) == (terminal and width < 200)
    legend = "breaches a/rs/rv/u: breaches of the ack / restore / resolution / update clocks"
    assert legend in text.replace("\n", " ") or legend in text
    for abbreviation in ("p50/p90:", "biz:", "in SLA:"):
        assert abbreviation in text


def test_html_has_no_empty_column_no_lone_card_and_shows_seconds() -> None:
    page = render_html(_new_install_report())
    assert "<td></td>" not in page and "<th></th>" not in page  # the availability table's empty column
    assert "1.3 s / 1.3 s" in page and not re.search(r"(?<![\d.])0 min", page)
    assert page.count('<div class="card">') == 6
    # 6 cards: one row of 6, two of 3 or three of 2, never one left alone on a row
    assert "grid-template-columns:repeat(6,1fr)" in page and "repeat(3,1fr)" in page
    assert "repeat(2,1fr)" in page
    # three charts: the weekly one across the page, the two others side by side: no empty half cell
    assert page.count("<figure>") == 3 and ".charts figure:first-child{grid-column:1/-1}" in page
    assert "in November 2026 so far" in page and DEFAULT_PERIOD_NOTE in page


def test_every_command_reads_dates_alike() -> None:
    assert parse_instant("2025-03-04", "--as-of") == datetime(2025, 3, 4, tzinfo=UTC)
    assert timeforms.parse_instant("2025-03-04") == datetime(2025, 3, 4, tzinfo=UTC)
    assert timeforms.parse_instant("2025-03-04 10:30") == datetime(2025, 3, 4, 10, 30, tzinfo=UTC)
    assert timeforms.parse_instant("2025-03-04t10:30z") == datetime(2025, 3, 4, 10, 30, tzinfo=UTC)
    assert timeforms.parse_month_start("2025-04") == datetime(2025, 4, 1, tzinfo=UTC)
    assert timeforms.parse_month_start("2025-04-01") == datetime(2025, 4, 1, tzinfo=UTC)
    assert timeforms.parse_month_start("2025-04-01T00:00Z") == datetime(2025, 4, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match=r"start of a month.*2025-04 .*or 2025-05 \(April 2025 too\)"):
        timeforms.parse_month_start("2025-04-15")
    with pytest.raises(ValueError, match="not a month; use YYYY-MM"):
        timeforms.parse_month_start("April")
    assert month_of(datetime(2025, 12, 31, 23, 59, tzinfo=UTC)) == (
        datetime(2025, 12, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip


def test_db_archive_before_takes_the_shared_forms() -> None:
    from incident_engine.cli import app

    result = CliRunner().invoke(app, ["db", "archive", "--before", "2025-04-15", "--to", "/tmp"])
    assert result.exit_code == 2 and "not the start of a month" in result.stderr


@pytest.mark.parametrize(
    ("form", "expected"),
    [("2025-03-04", "2025-03-04T00:00:00Z"), ("2025-03-04T21:30+11:00", "2025-03-04T10:30:00Z")],
)
def test_publish_time_takes_the_shared_forms(
    monkeypatch: pytest.MonkeyPatch, form: str, expected: str
) -> None:
    from incident_engine.cli import app
    from incident_engine.entrypoints import commands

    sent: list[dict[str, object]] = []

    async def publish_events(servers: str, events: list[dict[str, object]], settings: object) -> None:
        sent.extend(events)

    monkeypatch.setattr(commands, "publish_events", publish_events)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    args = ["publish", "acknowledged", "--incident", "INC-1", "--time"]
    result = CliRunner().invoke(app, [*args, form])
    assert result.exit_code == 0, result.output
    assert [event["time"] for event in sent] == [expected]
    bad = CliRunner().invoke(app, [*args, "next week"])
    assert bad.exit_code == 2 and "'next week' is not a date or time" in bad.stderr

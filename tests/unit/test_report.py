"""Pure parts of replay and reporting: replay modes, percentiles, downtime unions, dates, SVG, HTML."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
import typer

from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.replay import rebuild, replay_incident
from incident_engine.replay_cli import parse_instant, parse_month
from incident_engine.reporting.compliance import build_report, downtime, percentile
from incident_engine.reporting.facts import IncidentFacts
from incident_engine.reporting.html import render_html
from incident_engine.reporting.seed import LOG_COLUMNS, record_history
from incident_engine.reporting.svg import bar_chart, line_chart, nice_top

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

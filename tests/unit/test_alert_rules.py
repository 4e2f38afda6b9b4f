"""The Prometheus alerting rules: well formed, linked to a runbook paragraph, on metrics that exist."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from incident_engine.adapters.telemetry import create_telemetry

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "incident-engine-rules.yaml"
CHART_RULES = REPO / "deploy" / "helm" / "incident-sla-engine" / "files" / "prometheus-rules.yaml"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
# What the issue asks to alert on, by the alert that does it.
REQUIRED = {
    "IncidentEngineDown", "IncidentEngineAbsent", "IncidentEngineConsumerLag", "IncidentEngineOutboxBacklog",
    "IncidentEngineTimersLate", "IncidentEngineDeadLetters", "IncidentEngineBreachRate",
}  # fmt: skip


def rules() -> list[dict[str, Any]]:
    """Every rule of the plain rule file."""
    document = yaml.safe_load(RULES.read_text())
    assert set(document) == {"groups"}
    return [rule for group in document["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The engine's metric names an expression reads (`up` is Prometheus' own)."""
    return set(re.findall(r"\bincidents_[a-z0-9_]+", expr))


def readme_anchors() -> set[str]:
    """GitHub's anchors of the README's headings (lower case, spaces to dashes, punctuation dropped)."""
    headings = re.findall(r"^#{1,6} (.+)$", (REPO / "README.md").read_text(), re.M)
    return {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_chart_ships_the_very_same_file() -> None:
    assert CHART_RULES.is_symlink() and CHART_RULES.resolve() == RULES.resolve()


def test_each_rule_is_well_formed() -> None:
    found = rules()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names)) and set(names) >= REQUIRED
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert DURATION.match(rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"]
        # scoped to the engine's scrape job (the Helm chart substitutes the release's one)
        assert 'job="incident-sla-engine"' in rule["expr"], rule["alert"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_each_alert_links_to_its_runbook_paragraph() -> None:
    anchors = readme_anchors()
    for rule in rules():
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "README.md" and anchor in anchors, f"{rule['alert']}: no README heading for {url}"


def test_every_metric_in_the_rules_is_exported() -> None:
    """Names as Prometheus sees them (`_total`, `_bucket`, units), from a fresh engine's exposition with
    one value of each kind recorded: the series the rules watch exist from the start."""
    telemetry = create_telemetry("rules-test", span_exporters=[])
    try:
        telemetry.metrics.timer_lateness(0.01)
        telemetry.metrics.batch(1, 0.01)
        for gauge in ("incidents_timers_armed", "incidents_outbox_backlog", "incidents_consumer_lag"):
            telemetry.metrics.observe(gauge, lambda: 0.0)
        text = telemetry.metrics_text()[0].decode()
    finally:
        telemetry.shutdown()
    exported = {
        line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("incidents_")
    }
    used = set().union(*(metric_names(rule["expr"]) for rule in rules()))
    assert used and used <= exported, f"not exported: {sorted(used - exported)}"
    # the series `increase(...) > 0` rules watch are there at 0 before the first occurrence
    for series in (
        'incidents_rejections_total{reason="unprocessable"} 0.0',
        "incidents_timers_dropped_total 0.0",
        'incidents_outbox_parked_total{topic="incidents.rejected"} 0.0',
    ):
        assert series in text, series

"""Policies as data: the shipped ones match design §5; a bad file gets a clear error."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from incident_engine.domain import PolicyError, PolicyRegistry, UnknownPolicyError
from incident_engine.domain.policy import POLICY_DIR, load_policy
from tests.unit.sla_helpers import registry

pytestmark = pytest.mark.unit

MIN = timedelta(minutes=1)
# policy -> severity -> (calendar, {clock: (budget, failover)}): design §5, tabulated.
DESIGN = {
    "livepro-1": {
        "critical": ("24x7", {"ack": (15 * MIN, False), "restore": (30 * MIN, True)}),
        "high": ("business", {"ack": (30 * MIN, False), "resolution": (12 * 60 * MIN, False)}),
        "low": ("business", {"ack": (30 * MIN, False), "update": (12 * 60 * MIN, False)}),
    },
    "livepro-2": {
        "critical": ("24x7", {"ack": (15 * MIN, False), "restore": (30 * MIN, True)}),
        "high": ("business", {"ack": (15 * MIN, False), "restore": (30 * MIN, True)}),
        "low": ("business", {"ack": (30 * MIN, False), "update": (12 * 60 * MIN, False)}),
    },
}


@pytest.mark.parametrize("name", sorted(DESIGN))
def test_shipped_policies_match_the_design(name: str) -> None:
    policy = registry().get(name)
    for severity, (calendar, clocks) in DESIGN[name].items():
        rules = policy.rules(severity)
        assert rules.calendar == calendar
        assert {c: (s.budget, s.failover) for c, s in rules.clocks.items()} == clocks
        assert all(spec.thresholds == (0.5, 0.8) for spec in rules.clocks.values())
    assert {r: str(c.timezone) for r, c in policy.calendars.items()} == {
        "au": "Australia/Sydney",
        "us": "America/New_York",
        "uk": "Europe/London",
    }


def test_unknown_policy_name() -> None:
    with pytest.raises(UnknownPolicyError, match=r"unknown policy 'nope' \(known: livepro-1, livepro-2\)"):
        registry().get("nope")


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    path = tmp_path / "livepro-1.yaml"
    shutil.copy(POLICY_DIR / "livepro-1.yaml", path)
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "field", "problem"),
    [
        (
            "ack: {budget: 15m}",
            "ack: {budget: 15x}",
            "severities.critical.clocks.ack.budget",
            "does not match",
        ),
        ("ack: {budget: 15m}", "ack: {budget: 15m, colour: red}", "severities.critical.clocks.ack", "colour"),
        ("  high:\n", "  urgent:\n", "severities", "'high' is a required property"),
        ("Australia/Sydney", "Australia/Atlantis", "regions.au.timezone", "unknown time zone"),
        ("subdiv: NSW", "subdiv: XYZ", "regions.au.holidays", "holidays package"),
        ('closes: "20:00"', 'closes: "07:00"', "business_hours.closes", "is not after"),
        ("warning_thresholds: [0.5, 0.8]", "warning_thresholds: [0.5, 1.5]", "warning_thresholds.1", "1.5"),
        ("name: livepro-1", "name: livepro-9", "name", "differs from the file name"),
        ("severities:", "severities: [", "(file)", "cannot be read as YAML"),
    ],
)
def test_bad_policy_names_file_field_and_problem(
    tmp_path: Path, old: str, new: str, field: str, problem: str
) -> None:
    path = _broken(tmp_path, old, new)
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}: {field}: ")
    assert problem in caught.value.problem


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"no \*\.yaml policy file"):
        PolicyRegistry.load(tmp_path)


def test_per_clock_thresholds(tmp_path: Path) -> None:
    path = _broken(tmp_path, "ack: {budget: 15m}", "ack: {budget: 15m, warning_thresholds: [0.9, 0.25]}")
    spec = load_policy(path).rules("critical").clocks["ack"]
    assert spec.thresholds == (0.25, 0.9)
    assert spec.warning_budgets == ((0.25, timedelta(seconds=225)), (0.9, timedelta(seconds=810)))

"""Policies as data: the shipped ones match design §5; a bad file gets a clear error."""

from __future__ import annotations

import re
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
            "expected a duration like 90s, 15m or 12h",
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
    assert re.search(
        rf"^{re.escape(str(path))}(:\d+)?: {re.escape(field)}: .*{re.escape(problem)}",
        str(caught.value),
        re.M,
    )
    assert any(problem in said for _, _, said in caught.value.problems)


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"no \*\.yaml policy file"):
        PolicyRegistry.load(tmp_path)


def test_per_clock_thresholds(tmp_path: Path) -> None:
    path = _broken(tmp_path, "ack: {budget: 15m}", "ack: {budget: 15m, warning_thresholds: [0.9, 0.25]}")
    spec = load_policy(path).rules("critical").clocks["ack"]
    assert spec.thresholds == (0.25, 0.9)
    assert spec.warning_budgets == ((0.25, timedelta(seconds=225)), (0.9, timedelta(seconds=810)))


def test_every_problem_of_a_file_is_reported_with_its_line(tmp_path: Path) -> None:
    path = _broken(tmp_path, "ack: {budget: 15m}", "ack: {budget: 15 minutes}")
    text = (
        path.read_text()
        .replace("Australia/Sydney", "7")
        .replace("resolution: {budget: 12h}", "resolution: {}")
    )
    path.write_text(text)
    lines = text.splitlines()
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value).splitlines()
    assert message[0] == f"{path}: 3 problems"
    found = {m.split(": ")[1]: m for m in message[1:]}  # field -> its line of the message
    assert set(found) == {
        "regions.au.timezone", "severities.critical.clocks.ack.budget", "severities.high.clocks.resolution"
    }  # fmt: skip
    for field, line in found.items():
        number = int(line.split(":")[1])  # file:LINE: field: problem, LINE being where the field is
        assert field.split(".")[-1] in lines[number - 1], (field, lines[number - 1])
    budget = found["severities.critical.clocks.ack.budget"]
    assert "'15 minutes' is not valid: expected a duration like 90s, 15m or 12h" in budget
    assert "'budget' is a required property" in found["severities.high.clocks.resolution"]


def test_a_good_file_has_no_problem_and_one_problem_is_one_line(tmp_path: Path) -> None:
    assert load_policy(POLICY_DIR / "livepro-1.yaml").name == "livepro-1"
    path = _broken(tmp_path, "ack: {budget: 15m}", "ack: {budget: 15d}")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    (line,) = str(caught.value).splitlines()
    assert re.match(
        rf"{re.escape(str(path))}:\d+: severities.critical.clocks.ack.budget: '15d' is not valid", line
    )

"""SLA policies as data: YAML files validated by `schemas/policy.schema.json`, pinned per incident by name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import time, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
import yaml

from incident_contracts.constants import CLOCKS, REGIONS, SEVERITIES
from incident_engine.domain.calendar import AlwaysOpen, BusinessCalendar, Calendar, HolidaySource
from incident_engine.domain.errors import PolicyError, UnknownPolicyError

DEFAULT_POLICY = "livepro-1"
DEFAULT_THRESHOLDS = (0.5, 0.8)
REPO_ROOT = Path(__file__).resolve().parents[3]
POLICY_DIR = REPO_ROOT / "policies"
POLICY_SCHEMA_PATH = REPO_ROOT / "schemas" / "policy.schema.json"
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_UNITS = {"s": 1, "m": 60, "h": 3600}
_ALWAYS_OPEN = AlwaysOpen()


@dataclass(frozen=True, slots=True)
class ClockSpec:
    """One clock of a severity: its budget, warning thresholds, and whether a breach orders a failover."""

    name: str
    budget: timedelta
    thresholds: tuple[float, ...]
    failover: bool = False
    warning_budgets: tuple[tuple[float, timedelta], ...] = ()  # (threshold, budget * threshold), lowest first

    @classmethod
    def build(cls, name: str, budget: timedelta, thresholds: tuple[float, ...], failover: bool) -> ClockSpec:
        """A spec with its warning budgets precomputed (they are needed at every clock start)."""
        warnings = tuple((t, budget * t) for t in sorted(thresholds))
        return cls(name, budget, tuple(sorted(thresholds)), failover, warnings)


@dataclass(frozen=True, slots=True)
class SeverityRules:
    """The clocks of one severity and the kind of calendar they run on."""

    calendar: str  # "24x7" | "business"
    clocks: dict[str, ClockSpec]


@dataclass(frozen=True, slots=True)
class Policy:
    """A named, versioned SLA policy."""

    name: str
    severities: dict[str, SeverityRules]
    calendars: dict[str, BusinessCalendar]  # region -> business calendar

    def rules(self, severity: str) -> SeverityRules:
        """The rules of a severity."""
        return self.severities[severity]

    def calendar(self, severity: str, region: str) -> Calendar:
        """The calendar the clocks of `severity` run on in `region`."""
        if self.severities[severity].calendar == "24x7":
            return _ALWAYS_OPEN
        return self.calendars[region]


class PolicyRegistry:
    """The loaded policies, by name."""

    def __init__(self, policies: dict[str, Policy]) -> None:
        self._policies = dict(policies)

    @classmethod
    def load(cls, directory: Path | str = POLICY_DIR) -> PolicyRegistry:
        """Load and validate every `*.yaml` policy of `directory`."""
        files = sorted(Path(directory).glob("*.yaml"))
        if not files:
            raise PolicyError(str(directory), "(directory)", "no *.yaml policy file found")
        return cls({policy.name: policy for policy in map(load_policy, files)})

    def get(self, name: str) -> Policy:
        """The policy called `name`; raise UnknownPolicyError naming the known ones."""
        try:
            return self._policies[name]
        except KeyError:
            raise UnknownPolicyError(name, self.names()) from None

    def __contains__(self, name: object) -> bool:
        return name in self._policies

    def names(self) -> list[str]:
        """Names of the loaded policies."""
        return sorted(self._policies)


@cache
def _policy_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(POLICY_SCHEMA_PATH.read_text())
    return jsonschema.Draft202012Validator(schema)


def load_policy(path: Path) -> Policy:
    """Read, validate and build one policy file; a bad file raises PolicyError naming every problem
    (its YAML path and line) at once, so that one edit can fix them all."""
    file = str(path)
    try:
        text = path.read_text()
        document = yaml.safe_load(text)
        root = yaml.compose(text)
    except (OSError, yaml.YAMLError) as exc:
        raise PolicyError(file, "(file)", f"cannot be read as YAML: {exc}") from None
    errors = sorted(_policy_validator().iter_errors(document), key=lambda e: list(map(str, e.path)))
    if errors:
        problems = [
            (_line_of(root, list(path)), ".".join(map(str, path)) or "(top level)", _say(e))
            for e in errors
            if (path := e.absolute_path) is not None
        ]
        raise PolicyError(file, problems[0][1], problems[0][2], problems)
    if document["name"] != path.stem:
        raise PolicyError(file, "name", f"{document['name']!r} differs from the file name {path.stem!r}")
    return _build(file, document)


def _say(error: jsonschema.ValidationError) -> str:
    """A validation error in words: a value that misses a documented pattern says what fits."""
    if error.validator == "pattern" and "description" in error.schema:
        return f"{error.instance!r} is not valid: expected {error.schema['description']}"
    return error.message


def _line_of(node: yaml.Node | None, path: list[Any]) -> int | None:
    """The 1-based line of the YAML node at `path` (the deepest one found), for error messages."""
    line = None
    for step in path:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if getattr(k, "value", None) == str(step)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
        else:
            node = None
    if node is not None:
        line = node.start_mark.line + 1
    return line


def _build(file: str, doc: dict[str, Any]) -> Policy:
    default_thresholds = tuple(sorted(doc.get("warning_thresholds", DEFAULT_THRESHOLDS)))
    severities = {}
    for severity in SEVERITIES:
        spec = doc["severities"][severity]
        clocks = {}
        for name in CLOCKS:  # fixed order: the order timers due together are emitted in
            if name in spec["clocks"]:
                clock = spec["clocks"][name]
                thresholds = tuple(sorted(clock.get("warning_thresholds", default_thresholds)))
                budget = timedelta(seconds=int(clock["budget"][:-1]) * _UNITS[clock["budget"][-1]])
                clocks[name] = ClockSpec.build(name, budget, thresholds, bool(clock.get("failover", False)))
        severities[severity] = SeverityRules(spec["calendar"], clocks)
    hours = doc["business_hours"]
    opens, closes = _clock_time(hours["opens"]), _clock_time(hours["closes"])
    if closes <= opens:
        raise PolicyError(file, "business_hours.closes", f"{hours['closes']} is not after {hours['opens']}")
    weekdays = frozenset(_WEEKDAYS.index(d) for d in hours["days"])
    calendars = {}
    for region in REGIONS:
        where = doc["regions"][region]
        zone = _zone(file, f"regions.{region}.timezone", where["timezone"])
        source = HolidaySource(where["holidays"]["country"], where["holidays"].get("subdiv"))
        _check_holidays(file, f"regions.{region}.holidays", source)
        calendars[region] = business_calendar(zone, opens, closes, weekdays, source)
    return Policy(doc["name"], severities, calendars)


@cache
def business_calendar(
    zone: ZoneInfo, opens: time, closes: time, weekdays: frozenset[int], source: HolidaySource
) -> BusinessCalendar:
    """One shared calendar per definition, so its per-day cache serves every policy that uses it."""
    return BusinessCalendar(zone, opens, closes, weekdays, source)


def _clock_time(text: str) -> time:
    hour, minute = text.split(":")
    return time(int(hour), int(minute))


def _zone(file: str, field: str, name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise PolicyError(file, field, f"unknown time zone {name!r}") from None


def _check_holidays(file: str, field: str, source: HolidaySource) -> None:
    try:
        source.dates(2025)
    except NotImplementedError as exc:
        raise PolicyError(file, field, f"the holidays package does not know it: {exc}") from None

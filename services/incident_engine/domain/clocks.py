"""SLA clocks (design §5): when each starts and stops, its timers, and firing what is due."""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from incident_contracts.constants import CLOCK_ACK, CLOCK_RESOLUTION, CLOCK_RESTORE, CLOCK_UPDATE
from incident_contracts.envelope import OutputEvent
from incident_engine.domain.calendar import AlwaysOpen, Calendar
from incident_engine.domain.model import (
    BREACH,
    BREACHED,
    FAILOVER,
    MET,
    WARNING,
    ClockState,
    Incident,
    Timer,
)
from incident_engine.domain.outputs import timer_fired
from incident_engine.domain.policy import ClockSpec


@dataclass(frozen=True, slots=True)
class ClockRule:
    """Which lifecycle triggers start and stop a clock; `cycles`: every other accepted event restarts it."""

    starts_on: frozenset[str]
    stops_on: frozenset[str]
    cycles: bool = False


_UNTIL_RESTORED: Final = frozenset({"failed_over", "restored"})
CLOCK_RULES: Final = {
    CLOCK_ACK: ClockRule(
        frozenset({"reported"}), frozenset({"acknowledged", "investigating", *_UNTIL_RESTORED})
    ),
    CLOCK_RESTORE: ClockRule(frozenset({"reported"}), _UNTIL_RESTORED),
    CLOCK_RESOLUTION: ClockRule(frozenset({"reported"}), _UNTIL_RESTORED),
    CLOCK_UPDATE: ClockRule(
        frozenset({"acknowledged", "investigating", "failed_over"}), frozenset({"restored"}), cycles=True
    ),
}


def apply_trigger(
    incident: Incident, trigger: str, at: datetime, specs: dict[str, ClockSpec], calendar: Calendar
) -> None:
    """Start, stop or restart the incident's clocks for an accepted `trigger` effective at `at`.

    Timers due at or before `at` must already have fired: stopping cancels only what is left.
    """
    for name, spec in specs.items():
        rule = CLOCK_RULES[name]
        clock = incident.clocks.get(name)
        if clock is None:
            if trigger in rule.starts_on:
                start_clock(incident, spec, at, 1, calendar)
        elif clock.stopped_at is None:
            if trigger in rule.stops_on:
                stop_clock(incident, name, clock, at)
            elif rule.cycles:
                stop_clock(incident, name, clock, at)
                start_clock(incident, spec, at, clock.cycle + 1, calendar)


def start_clock(incident: Incident, spec: ClockSpec, at: datetime, cycle: int, calendar: Calendar) -> None:
    """Start a cycle of a clock at `at`, with a timer for its first threshold (or its breach).

    Only the next timer of each clock is pending: firing one schedules its successor, which keeps
    starting and stopping clocks cheap (most stop before their first warning).
    """
    due = calendar.add(at, spec.budget)
    incident.clocks[spec.name] = ClockState(started_at=at, due_at=due, cycle=cycle)
    if spec.warning_budgets:
        threshold, budget = spec.warning_budgets[0]
        first = Timer(calendar.add(at, budget), spec.name, WARNING, threshold, cycle, incident.id)
    else:
        first = Timer(due, spec.name, BREACH, None, cycle, incident.id)
    insort(incident.timers, first)


def stop_clock(incident: Incident, name: str, clock: ClockState, at: datetime) -> None:
    """Stop a clock at `at` and cancel its pending timer."""
    clock.stopped_at = at
    if clock.status != BREACHED:
        clock.status = MET
    timers = incident.timers
    for index, timer in enumerate(timers):
        if timer[1] == name:  # the clock's pending timer: drop it (most clocks stop before any fires)
            del timers[index]  # in place, and the only one: a clock has one pending timer at a time
            return


def next_timer(timer: Timer, clock: ClockState, spec: ClockSpec, calendar: Calendar) -> Timer | None:
    """The timer of the same clock cycle that follows `timer`: next threshold, breach, failover, or none."""
    kind = timer.kind
    if kind == WARNING:
        for threshold, budget in spec.warning_budgets:
            if threshold > timer.threshold:  # type: ignore[operator]
                due = calendar.add(clock.started_at, budget)
                return Timer(due, timer.clock, WARNING, threshold, timer.cycle, timer.incident_id)
        return Timer(clock.due_at, timer.clock, BREACH, None, timer.cycle, timer.incident_id)
    if kind == BREACH and spec.failover:
        return Timer(timer.due_at, timer.clock, FAILOVER, None, timer.cycle, timer.incident_id)
    return None


_new_timer = tuple.__new__  # Timer(...) without the NamedTuple's Python-level __new__: same tuple
_TRIGGERS: Final = ("reported", "acknowledged", "investigating", "failed_over", "restored", "updated")
# (clock name, spec, starts, stops, cycles): what a trigger may do to one clock
Action = tuple[str, ClockSpec, bool, bool, bool]


class ClockPlan:
    """The clocks of one (policy, severity, region), prepared once for the hot path.

    `apply` does what `apply_trigger` does and `fire` fires timers, with per trigger only the clocks it
    can start, stop or restart, each clock's first and next timers looked up rather than searched,
    and 24x7 time added directly.
    """

    __slots__ = ("_actions", "_add", "_failover", "_first", "_next_warning", "calendar", "owner", "specs")

    @property
    def failover_clocks(self) -> frozenset[str]:
        """The clocks whose breach also orders a failover."""
        return self._failover

    def __init__(self, specs: dict[str, ClockSpec], calendar: Calendar, owner: object = None) -> None:
        self.specs = specs
        self.calendar = calendar
        self.owner = owner  # the SlaDomain that made it (whose plan an Incident caches)
        self._add = None if isinstance(calendar, AlwaysOpen) else calendar.add
        self._actions: dict[str, tuple[Action, ...]] = {}
        for trigger in _TRIGGERS:
            actions = []
            for name, spec in specs.items():
                rule = CLOCK_RULES[name]
                starts, stops = trigger in rule.starts_on, trigger in rule.stops_on
                if starts or stops or rule.cycles:
                    actions.append((name, spec, starts, stops, rule.cycles))
            self._actions[trigger] = tuple(actions)
        self._failover = frozenset(name for name, spec in specs.items() if spec.failover)
        # clock -> (kind, threshold, budget) of a cycle's first timer
        self._first: dict[str, tuple[str, float | None, timedelta]] = {}
        # (clock, threshold) -> (next threshold, its budget), or None when the breach comes next
        self._next_warning: dict[tuple[str, float], tuple[float, timedelta] | None] = {}
        for name, spec in specs.items():
            warnings = spec.warning_budgets
            if warnings:
                self._first[name] = (WARNING, warnings[0][0], warnings[0][1])
            else:
                self._first[name] = (BREACH, None, spec.budget)
            for threshold, _ in warnings:
                following = [(t, b) for t, b in warnings if t > threshold]
                self._next_warning[name, threshold] = following[0] if following else None

    def apply(self, incident: Incident, trigger: str, at: datetime) -> None:
        """`apply_trigger` for this plan's clocks."""
        actions = self._actions.get(trigger)
        if actions is None:
            apply_trigger(incident, trigger, at, self.specs, self.calendar)
            return
        clocks = incident.clocks
        for name, spec, starts, stops, cycles in actions:
            clock = clocks.get(name)
            if clock is None:
                if starts:
                    self._start(incident, name, spec.budget, at, 1)
            elif clock.stopped_at is None:
                if stops:
                    stop_clock(incident, name, clock, at)
                elif cycles:
                    stop_clock(incident, name, clock, at)
                    self._start(incident, name, spec.budget, at, clock.cycle + 1)

    def _start(self, incident: Incident, name: str, budget: timedelta, at: datetime, cycle: int) -> None:
        """`start_clock`: the cycle's state and its first timer."""
        add = self._add
        due = at + budget if add is None else add(at, budget)
        incident.clocks[name] = ClockState(at, due, cycle)
        kind, threshold, first_budget = self._first[name]
        if kind == WARNING:
            due = at + first_budget if add is None else add(at, first_budget)
        insort(incident.timers, _new_timer(Timer, (due, name, kind, threshold, cycle, incident.id)))

    def fire(
        self,
        incident: Incident,
        until: datetime,
        now: datetime,
        outputs: list[OutputEvent] | None,
        fired: list[Timer] | None = None,
        breach_until: datetime | None = None,
    ) -> None:
        """Fire every timer due by `until` (successors included), emitting at `now`.

        Breaches and failover orders fire only when due by `breach_until` (default `until`): the
        live engine holds them for a grace after their due moment, so that evidence in flight can
        still stop the clock (the warnings of other clocks go on meanwhile). With `outputs` None no
        output event is built (a replay after state alone); `fired`, when given, receives each
        fired timer (what a replay needs of its outputs, for less than their cost).
        """
        timers = incident.timers
        clocks = incident.clocks
        next_warnings = self._next_warning
        successor: tuple[datetime, str, str, float | None, int, str]
        held = until if breach_until is None else breach_until
        index = 0
        while index < len(timers) and timers[index][0] <= until:
            if timers[index][2] != WARNING and timers[index][0] > held:
                index += 1  # a breach still within its grace: later warnings go on without it
                continue
            timer = timers.pop(index)
            index = 0  # its successor may sort before the held ones
            due, name, kind, threshold, cycle, incident_id = timer
            clock = clocks[name]
            if outputs is not None:
                outputs.append(timer_fired(incident, timer, now))
            if fired is not None:
                fired.append(timer)
            if kind == WARNING:
                following = next_warnings.get((name, threshold or 0.0), _UNKNOWN)
                if following is None:
                    successor = (clock.due_at, name, BREACH, None, cycle, incident_id)
                elif following is _UNKNOWN:  # a threshold the policy does not have: search as before
                    found = next_timer(timer, clock, self.specs[name], self.calendar)
                    if found is not None:
                        insort(timers, found)
                    continue
                else:
                    add = self._add
                    budget = following[1]
                    at = clock.started_at + budget if add is None else add(clock.started_at, budget)
                    successor = (at, name, WARNING, following[0], cycle, incident_id)
            elif kind == BREACH:
                clock.status = BREACHED
                if name not in self._failover:
                    continue
                successor = (due, name, FAILOVER, None, cycle, incident_id)
            else:
                continue
            insort(timers, _new_timer(Timer, successor))


_UNKNOWN: Final[tuple[float, timedelta]] = (float("nan"), timedelta(0))  # not in the plan

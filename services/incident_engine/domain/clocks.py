"""SLA clocks (design §5): when each starts and stops, its timers, and firing what is due."""

from __future__ import annotations

from bisect import insort
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from incident_contracts.constants import CLOCK_ACK, CLOCK_RESOLUTION, CLOCK_RESTORE, CLOCK_UPDATE
from incident_contracts.envelope import OutputEvent
from incident_engine.domain.calendar import Calendar
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
    incident.timers = [t for t in incident.timers if t.clock != name]


def fire_timers(
    incident: Incident,
    until: datetime,
    now: datetime,
    outputs: list[OutputEvent],
    specs: dict[str, ClockSpec],
    calendar: Calendar,
) -> None:
    """Fire, in order, every timer due at or before `until` (successors included), emitting at `now`."""
    timers = incident.timers
    while timers and timers[0].due_at <= until:
        timer = timers.pop(0)
        clock = incident.clocks[timer.clock]
        if timer.kind == BREACH:
            clock.status = BREACHED
        outputs.append(timer_fired(incident, timer, now))
        successor = next_timer(timer, clock, specs[timer.clock], calendar)
        if successor is not None:
            insort(timers, successor)


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

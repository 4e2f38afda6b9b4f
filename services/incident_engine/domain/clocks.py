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
    """Start a cycle of a clock at `at`: its state, and a timer per warning threshold, breach, failover."""
    due = calendar.add(at, spec.budget)
    incident.clocks[spec.name] = ClockState(started_at=at, due_at=due, cycle=cycle)
    timers = incident.timers
    key = _sort_key
    for threshold, budget in spec.warning_budgets:
        warn_at = calendar.add(at, budget)
        insort(timers, Timer(incident.id, spec.name, WARNING, threshold, cycle, warn_at), key=key)
    insort(timers, Timer(incident.id, spec.name, BREACH, None, cycle, due), key=key)
    if spec.failover:
        insort(timers, Timer(incident.id, spec.name, FAILOVER, None, cycle, due), key=key)


def stop_clock(incident: Incident, name: str, clock: ClockState, at: datetime) -> None:
    """Stop a clock at `at` and cancel its pending timers."""
    clock.stopped_at = at
    if clock.status != BREACHED:
        clock.status = MET
    incident.timers = [t for t in incident.timers if t.clock != name]


def fire_timers(incident: Incident, until: datetime, now: datetime, outputs: list[OutputEvent]) -> None:
    """Fire, in order, every pending timer due at or before `until`, emitting at `now`."""
    timers = incident.timers
    while timers and timers[0].due_at <= until:
        timer = timers.pop(0)
        if timer.kind == BREACH:
            incident.clocks[timer.clock].status = BREACHED
        outputs.append(timer_fired(incident, timer, now))


def _sort_key(timer: Timer) -> tuple[datetime, int, int, float]:
    return timer.sort_key

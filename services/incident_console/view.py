"""How clocks and moments read on the page: bar fill and colour, labels, local and UTC times."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from incident_console.backend import ClockView

AMBER, RED = 0.5, 0.8  # the policy's warning thresholds: a bar turns amber, then red


def duration(seconds: float) -> str:
    """`45s`, `12m 5s`, `3h 20m`, `2d 4h`."""
    s = int(abs(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def city(zone: str) -> str:
    """`Australia/Sydney` -> `Sydney`."""
    return zone.rsplit("/", 1)[-1].replace("_", " ")


def local(moment: datetime, zone: str) -> str:
    """`Mon 30 Nov 14:05 Sydney`."""
    return f"{moment.astimezone(ZoneInfo(zone)):%a %d %b %H:%M} {city(zone)}"


def utc(moment: datetime) -> str:
    """`2026-11-30 03:05:00 UTC`."""
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"


def level(fraction: float) -> str:
    """The bar's colour: ok below 50 %, amber from 50 %, red from 80 %, breached from 100 %."""
    if fraction >= 1.0:
        return "breached"
    if fraction >= RED:
        return "red"
    return "amber" if fraction >= AMBER else "ok"


def bar(clock: ClockView, now: datetime) -> dict[str, Any]:
    """Everything a clock's bar needs: fill, colour, label, and what the script needs to move it."""
    fraction = clock.fraction
    if not clock.running:
        when = local(clock.stopped_at or clock.due_at, clock.zone)
        label = {"met": f"met · stopped {when}", "breached": f"breached · stopped {when}"}.get(
            clock.status, f"{clock.status} · stopped {when}"
        )
        return {
            "pct": min(fraction, 1.0) * 100,
            "level": "stopped " + level(fraction),
            "label": label,
            "rate": 0.0,
            "fraction": fraction,
            "budget": clock.budget_seconds,
            "state": "stopped",
        }
    if fraction >= 1.0:
        label = f"breached {duration((now - clock.due_at).total_seconds())} ago"
    else:
        label = f"{duration(clock.remaining_seconds)} left"
    state = "running" if clock.open_now else "paused"
    if not clock.open_now and clock.resumes_at is not None:
        resumes = clock.resumes_at.astimezone(ZoneInfo(clock.zone))
        label += f" · paused, resumes {resumes:%a %H:%M} {city(clock.zone)}"
    rate = 1.0 / clock.budget_seconds if clock.open_now and clock.budget_seconds > 0 else 0.0
    return {
        "pct": min(fraction, 1.0) * 100,
        "level": level(fraction),
        "label": label,
        "rate": rate,
        "fraction": fraction,
        "budget": clock.budget_seconds,
        "state": state,
    }

"""Business calendars: worked examples (Friday evening, holidays, DST) and hypothesis properties."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from incident_engine.domain import AlwaysOpen, BusinessCalendar
from tests.unit.sla_helpers import ZONES, local, registry

pytestmark = pytest.mark.unit

H = timedelta(hours=1)
REGIONS = ("au", "us", "uk")


def calendar(region: str) -> BusinessCalendar:
    """The business calendar of a region, as the shipped policy defines it."""
    return registry().get("livepro-1").calendars[region]


@pytest.mark.parametrize(
    ("region", "start", "budget", "due"),
    [
        # Friday evening: 1h left on Friday, the rest on Monday.
        ("au", "2025-06-13 19:00", 12 * H, "2025-06-16 19:00"),
        ("us", "2025-06-13 19:00", 12 * H, "2025-06-16 19:00"),
        ("uk", "2025-06-13 19:00", 12 * H, "2025-06-16 19:00"),
        # Reported after hours on Friday: nothing runs until Monday 08:00.
        ("au", "2025-06-13 21:30", 30 * timedelta(minutes=1), "2025-06-16 08:30"),
        # Public holidays: ANZAC Day (Fri 25 Apr), Independence Day (Fri 4 Jul), Easter (uk: Fri + Mon).
        ("au", "2025-04-24 19:00", 12 * H, "2025-04-28 19:00"),
        ("us", "2025-07-03 19:00", 12 * H, "2025-07-07 19:00"),
        ("uk", "2025-04-17 19:00", 12 * H, "2025-04-22 19:00"),
        # DST changes over the weekend: wall-clock hours stay 08:00-20:00 on both sides.
        ("au", "2025-04-04 19:00", 12 * H, "2025-04-07 19:00"),  # AEDT -> AEST, Sun 6 Apr
        ("us", "2025-03-07 19:00", 12 * H, "2025-03-10 19:00"),  # EST -> EDT, Sun 9 Mar
        ("uk", "2025-03-28 19:00", 12 * H, "2025-03-31 19:00"),  # GMT -> BST, Sun 30 Mar
        ("uk", "2025-10-24 19:00", 12 * H, "2025-10-27 19:00"),  # BST -> GMT, Sun 26 Oct
        # Landing exactly on the close of a day is due at the close, not the next opening.
        ("uk", "2025-06-11 08:00", 12 * H, "2025-06-11 20:00"),
    ],
)
def test_add(region: str, start: str, budget: timedelta, due: str) -> None:
    cal = calendar(region)
    assert cal.add(local(region, start), budget) == local(region, due)
    assert cal.elapsed(local(region, start), local(region, due)) == budget


def test_dst_weekend_real_hours_differ() -> None:
    """Across the US spring-forward weekend the same 12 business hours span one real hour less."""
    start, due = local("us", "2025-03-07 19:00"), local("us", "2025-03-10 19:00")
    assert due - start == timedelta(days=3) - H


def test_always_open_is_real_time_across_dst() -> None:
    start = datetime(2025, 3, 30, 0, 55, tzinfo=UTC)  # 00:55 GMT, five minutes before BST starts
    assert AlwaysOpen().add(start, timedelta(minutes=15)) == datetime(2025, 3, 30, 1, 10, tzinfo=UTC)
    assert AlwaysOpen().elapsed(start, start - H) == timedelta(0)


def test_is_open() -> None:
    cal = calendar("au")
    assert cal.is_open(local("au", "2025-06-11 08:00"))
    assert not cal.is_open(local("au", "2025-06-11 20:00"))
    assert not cal.is_open(local("au", "2025-06-14 12:00"))  # Saturday
    assert not cal.is_open(local("au", "2025-12-25 12:00"))  # Christmas


# --- properties -------------------------------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31), timezones=st.just(UTC)
)
budgets = st.integers(min_value=0, max_value=200 * 3600).map(lambda s: timedelta(seconds=s))
regions = st.sampled_from(REGIONS)


@settings(max_examples=300, deadline=None)
@given(region=regions, start=instants, budget=budgets)
def test_adding_then_measuring_gives_the_budget_back(region: str, start: datetime, budget: timedelta) -> None:
    cal = calendar(region)
    assert cal.elapsed(start, cal.add(start, budget)) == budget


@settings(max_examples=300, deadline=None)
@given(region=regions, first=instants, second=instants, budget=budgets)
def test_monotonic_in_the_start(region: str, first: datetime, second: datetime, budget: timedelta) -> None:
    cal = calendar(region)
    early, late = sorted((first, second))
    assert cal.add(early, budget) <= cal.add(late, budget)


@settings(max_examples=300, deadline=None)
@given(region=regions, start=instants, budget=budgets.filter(bool))
def test_never_inside_a_closed_period(region: str, start: datetime, budget: timedelta) -> None:
    cal = calendar(region)
    due = cal.add(start, budget)
    window = cal.window(due.astimezone(ZONES[region]).toordinal())
    assert window is not None and window[0] < due <= window[1]


@settings(max_examples=300, deadline=None)
@given(
    region=regions,
    day=st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 12, 31)),
    seconds=st.integers(min_value=1, max_value=12 * 3600),
    days=st.integers(min_value=1, max_value=40),
)
def test_stable_across_dst(region: str, day: date, seconds: int, days: int) -> None:
    """N whole business days from a wall-clock time land on the same wall-clock time, DST or not."""
    cal = calendar(region)
    assume(cal.window(day.toordinal()) is not None)
    wall = (datetime.combine(day, time(8)) + timedelta(seconds=seconds)).replace(tzinfo=ZONES[region])
    due = cal.add(wall.astimezone(UTC), days * 12 * H).astimezone(ZONES[region])
    assert due.time() == wall.time()
    assert cal.elapsed(wall.astimezone(UTC), due.astimezone(UTC)) == days * 12 * H

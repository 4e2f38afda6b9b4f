"""Business calendars: add business time to an instant and measure it between two, exact and fast.

Both operations walk whole days (at most a few for SLA budgets), never minutes: each local date has
one open window [open, close) converted to UTC once with zoneinfo, so a DST change is just a date
whose window is computed from its own UTC offsets. Holidays come from the `holidays` package,
computed once per year.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import holidays

ZERO = timedelta(0)
Window = tuple[datetime, datetime] | None
_UNKNOWN: Window = (datetime.min, datetime.min)  # not yet computed (a window is never this)


class Calendar(Protocol):
    """Business time arithmetic on aware datetimes."""

    def add(self, start: datetime, budget: timedelta) -> datetime:
        """The first instant at which `budget` of business time has passed since `start`."""
        ...

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        """Business time between `start` and `end` (zero when `end` <= `start`)."""
        ...

    def is_open(self, instant: datetime) -> bool:
        """True when business time runs at `instant`."""
        ...


class AlwaysOpen:
    """The 24x7 calendar: business time is real time."""

    def add(self, start: datetime, budget: timedelta) -> datetime:
        """`start + budget`."""
        return start + budget

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        """`end - start`, never negative."""
        return end - start if end > start else ZERO

    def is_open(self, instant: datetime) -> bool:
        """Always."""
        return True


@dataclass(frozen=True, slots=True)
class HolidaySource:
    """Which public holidays apply: a `holidays` country code and optional subdivision."""

    country: str
    subdiv: str | None = None

    def dates(self, year: int) -> set[int]:
        """Ordinals of the holidays (observed days included) of `year`."""
        table = holidays.country_holidays(self.country, subdiv=self.subdiv, years=year)
        return {d.toordinal() for d in table}


@dataclass(slots=True)
class BusinessCalendar:
    """Working days with one daily window of local wall-clock time, minus public holidays."""

    timezone: ZoneInfo
    opens: time = time(8)
    closes: time = time(20)
    weekdays: frozenset[int] = frozenset(range(5))  # Monday = 0
    holidays: HolidaySource | None = None
    _windows: dict[int, Window] = field(default_factory=dict, repr=False)
    _holiday_years: dict[int, set[int]] = field(default_factory=dict, repr=False)
    _first_open: dict[int, int] = field(default_factory=dict, repr=False, compare=False)  # see _open_from

    def window(self, ordinal: int) -> Window:
        """The UTC [open, close) window of a local date (by ordinal), or None when closed all day."""
        try:
            return self._windows[ordinal]
        except KeyError:
            pass
        day = date.fromordinal(ordinal)
        result: Window = None
        if day.weekday() in self.weekdays and not self._is_holiday(day):
            opens = datetime.combine(day, self.opens, self.timezone).astimezone(UTC)
            closes = datetime.combine(day, self.closes, self.timezone).astimezone(UTC)
            if closes > opens:
                result = (opens, closes)
        self._windows[ordinal] = result
        return result

    def _is_holiday(self, day: date) -> bool:
        if self.holidays is None:
            return False
        year = self._holiday_years.get(day.year)
        if year is None:
            year = self._holiday_years[day.year] = self.holidays.dates(day.year)
        return day.toordinal() in year

    def _local_ordinal(self, instant: datetime) -> int:
        return instant.astimezone(self.timezone).toordinal()

    def _first_ordinal(self, instant: datetime) -> int:
        """A local date (ordinal) at or before the local date of `instant`, no more than two days before.

        A local date is within a day of the UTC date (offsets are under 24 hours), so for a UTC
        instant the day before its UTC date will do, which saves a zoneinfo conversion; the windows
        of the extra day close before `instant`, so they change no sum.
        """
        if instant.tzinfo is UTC:
            return instant.toordinal() - 1
        return instant.astimezone(self.timezone).toordinal()

    def _last_ordinal(self, instant: datetime) -> int:
        """A local date at or after the local date of `instant` (its windows open after `instant`)."""
        if instant.tzinfo is UTC:
            return instant.toordinal() + 1
        return instant.astimezone(self.timezone).toordinal()

    def add(self, start: datetime, budget: timedelta) -> datetime:
        """The first instant at which `budget` of business time has passed since `start`."""
        if budget <= ZERO:
            return start
        if start.tzinfo is UTC:
            day = start.toordinal()
            ordinal = self._first_open.get(day)
            if ordinal is None:
                ordinal = self._open_from(day)
        else:
            ordinal = self._first_ordinal(start)
        remaining = budget
        windows = self._windows
        for _ in range(_MAX_DAYS):
            window = windows.get(ordinal, _UNKNOWN)
            if window is _UNKNOWN:
                window = self.window(ordinal)
            if window is not None:
                opens, closes = window
                begin = start if start > opens else opens
                if begin < closes:
                    available = closes - begin
                    if remaining <= available:
                        return begin + remaining
                    remaining -= available
            ordinal += 1
        raise ValueError(f"no business time within {_MAX_DAYS} days of {start.isoformat()}")

    def _open_from(self, day: int) -> int:
        """Where `add` starts walking for an instant of the UTC date `day`: the first local date whose
        window closes after that date begins (memoized). The dates before it, from the day before
        (`_first_ordinal`), are closed or close before the instant: they add nothing but a step."""
        midnight = datetime.combine(date.fromordinal(day), time(), UTC)
        ordinal = day - 1
        for _ in range(_MAX_DAYS):
            window = self.window(ordinal)
            if window is not None and window[1] > midnight:
                break
            ordinal += 1
        else:
            ordinal = day - 1  # no window for years: let `add` walk and fail as it would
        self._first_open[day] = ordinal
        return ordinal

    def elapsed(self, start: datetime, end: datetime) -> timedelta:
        """Business time between `start` and `end` (zero when `end` <= `start`)."""
        if end <= start:
            return ZERO
        total = ZERO
        for ordinal in range(self._first_ordinal(start), self._last_ordinal(end) + 1):
            window = self.window(ordinal)
            if window is not None:
                begin = max(start, window[0])
                finish = min(end, window[1])
                if finish > begin:
                    total += finish - begin
        return total

    def is_open(self, instant: datetime) -> bool:
        """True when `instant` lies inside its local date's window."""
        window = self.window(self._local_ordinal(instant))
        return window is not None and window[0] <= instant < window[1]


# Guard against a calendar with no open day at all (e.g. every weekday a holiday): ten years.
_MAX_DAYS = 3660

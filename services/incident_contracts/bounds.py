"""What the contract refuses because it cannot be stored or reasoned about (design §6).

One place for the limits, used by the pydantic models (and so the JSON Schemas), the fast msgspec
decoder and the engine's time check, so that every path decides alike:

- `id`, `source`, `subject`: 1..256 characters, no control character (Unicode Cc). The event log's
  unique index holds (source, id) and the projections' primary keys the subject: 256 + 256
  characters are at most 2 KiB of UTF-8, under Postgres' 2704-byte B-tree entry limit with room for
  the tuple header and the other key columns.
- Names in `data` (`by`, `site`, `customer`, `policy`): at most 256 characters, no control character.
- Free text in `data` (`summary`, `note`): at most 4096 characters; tab, line feed and carriage
  return allowed, no other control character (Postgres text and jsonb refuse U+0000 outright).
- `time`: the year as written in 2000..2099 (the calendar maths cannot reason about year 1 or
  9999); on the live topic also no more than INCIDENTS_MAX_CLOCK_SKEW ahead of the engine's clock
  and no older than INCIDENTS_MAX_EVENT_AGE (see `check_event_time`).
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Final

MAX_ID_LENGTH: Final = 256
MAX_SOURCE_LENGTH: Final = 256
MAX_SUBJECT_LENGTH: Final = 256
MAX_NAME_LENGTH: Final = 256
MAX_TEXT_LENGTH: Final = 4096
MIN_YEAR: Final = 2000
MAX_YEAR: Final = 2099

# JSON Schema (ECMA-262) patterns, published in the schemas; `$` is the end of the text there.
NAME_PATTERN: Final = r"^[^\u0000-\u001f\u007f-\u009f]*$"
TEXT_PATTERN: Final = r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f]*$"
TIME_PATTERN: Final = r"^20[0-9]{2}-"

_NAME_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TEXT_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _control(value: str, bad: re.Pattern[str]) -> str:
    found = bad.search(value)
    if found is None:
        return value
    raise ValueError(
        f"control character U+{ord(found.group()):04X} at position {found.start()} is not allowed"
    )


def check_name(value: str) -> str:
    """`value` unless it holds a control character (ValueError saying which and where)."""
    return _control(value, _NAME_BAD)


def check_text(value: str) -> str:
    """`value` unless it holds a control character other than tab, line feed and carriage return."""
    return _control(value, _TEXT_BAD)


def check_year(value: datetime) -> datetime:
    """`value` unless its year (as written, before any conversion) is outside MIN_YEAR..MAX_YEAR."""
    if MIN_YEAR <= value.year <= MAX_YEAR:
        return value
    raise ValueError(f"year {value.year} is outside {MIN_YEAR}..{MAX_YEAR}")


def check_event_time(
    time: datetime,
    now: datetime,
    max_clock_skew: timedelta,
    max_event_age: timedelta,
    sent: datetime | None = None,
) -> str | None:
    """Why `time` cannot be taken on the live topic at `now` (a `schema` rejection detail), or None.

    Ahead by more than `max_clock_skew` of when it was `sent` (the Kafka record's timestamp, when
    earlier than `now`: read from a backlog, an event is judged against when it was appended, not
    when it is read) or of `now`: a wrong clock upstream (an event dated 2099 would fire every clock
    at once; one 2 hours fast in a backlog would move its partition's SLA time past the events
    queued behind it). Older than `max_event_age`: an unset timestamp (1970) or a backfill, which
    goes through a raised INCIDENTS_MAX_EVENT_AGE or `incidents simulate`, not the live horizon.
    """
    reference, what = now, "the engine clock"
    if sent is not None and sent < now:
        reference, what = sent, "the moment Kafka took it"
    ahead = time - reference
    if ahead > max_clock_skew:
        return (
            f"time: {time.isoformat()} is {_span(ahead)} ahead of {what} ({reference.isoformat()});"
            f" at most {_span(max_clock_skew)} is allowed (INCIDENTS_MAX_CLOCK_SKEW)"
        )
    ahead = time - now
    if -ahead > max_event_age:
        return (
            f"time: {time.isoformat()} is {_span(-ahead)} old at {now.isoformat()}; the live topic takes"
            f" events up to {_span(max_event_age)} old (INCIDENTS_MAX_EVENT_AGE; backfill older ones"
            " with a raised limit or `incidents simulate`)"
        )
    return None


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 2 * 86400:
        return f"{seconds // 86400} days"
    if seconds >= 2 * 3600:
        return f"{seconds // 3600} hours"
    if seconds >= 120:
        return f"{seconds // 60} minutes"
    return f"{delta.total_seconds():g} seconds"

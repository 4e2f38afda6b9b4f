"""The date and time forms every command accepts (`report`, `replay`, what-if, `simulate`, `db archive`).

One rule everywhere: an RFC 3339 / ISO 8601 instant is taken as written (converted to UTC); a time
without an offset is UTC; a bare date (2025-03-04) is midnight UTC; a month (2025-03) is the UTC
month, [its first instant, the next month's first instant).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

INSTANT_FORMS = "e.g. 2025-03-04 (midnight UTC), 2025-03-04T10:30:00Z or 2025-03-04T21:30+11:00"
MONTH_FORMS = "YYYY-MM, e.g. 2025-03"


def parse_instant(text: str) -> datetime:
    """An instant in UTC from any of the accepted forms; ValueError naming them otherwise."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z").replace(" ", "T", 1))
    except ValueError:
        raise ValueError(f"{text!r} is not a date or time; use {INSTANT_FORMS}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_month(text: str) -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of a YYYY-MM month, in UTC."""
    match = re.fullmatch(r"(\d{4})-(\d{2})", text.strip())
    if not match or not 1 <= int(match[2]) <= 12:
        raise ValueError(f"{text!r} is not a month; use {MONTH_FORMS}")
    return month_of(datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC))


def month_of(moment: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month holding `moment`: [its first instant, the next month's first instant)."""
    moment = moment.astimezone(UTC)
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def parse_month_start(text: str) -> datetime:
    """The first instant of a month given as YYYY-MM, or as any instant form that is one (2025-04-01):
    for options that count whole months (`db archive --before`)."""
    if re.fullmatch(r"\s*\d{4}-\d{2}\s*", text):
        return parse_month(text)[0]
    try:
        moment = parse_instant(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a month; use {MONTH_FORMS}") from None
    start, _ = month_of(moment)
    if moment != start:
        after = month_of(moment)[1]
        raise ValueError(
            f"{text!r} is not the start of a month (whole months are archived); use YYYY-MM:"
            f" {start:%Y-%m} (the months before {start:%B %Y}) or {after:%Y-%m} ({start:%B %Y} too)"
        )
    return start

"""The SMS commands of the phone lines: `NEW`, `ACK`, `RESTORED`, `STATUS`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from incident_intake.people_common import parse_number

__all__ = ["SmsCommand", "parse_sms"]


@dataclass(frozen=True)
class SmsCommand:
    """A parsed SMS: the verb and either a number or the text of a new incident."""

    verb: str  # NEW | ACK | RESTORED | STATUS | HELP
    number: int | None = None
    severity: str | None = None
    text: str = ""


def parse_sms(body: str) -> SmsCommand:
    """`NEW [severity] <text>`, `ACK <n>`, `RESTORED <n>`, `STATUS <n>` (n: `INC-1042` or `1042`)."""
    words = body.strip().split(maxsplit=1)
    verb = words[0].upper() if words else ""
    rest = words[1].strip() if len(words) > 1 else ""
    if verb == "NEW" and rest:
        first, _, tail = rest.partition(" ")
        if first.lower() in ("critical", "high", "low") and tail.strip():
            return SmsCommand("NEW", severity=first.lower(), text=tail.strip())
        return SmsCommand("NEW", text=rest)
    if verb in ("ACK", "RESTORED", "STATUS"):
        number = parse_number(rest) if "inc-" in rest.lower() else None
        if number is None and re.fullmatch(r"\d{1,12}", rest):
            number = int(rest)
        if number is not None:
            return SmsCommand(verb, number=number)
    return SmsCommand("HELP")

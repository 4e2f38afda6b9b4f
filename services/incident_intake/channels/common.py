"""What the channels share: payload errors, times, text bounds, the severity and region mappings."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from incident_contracts.bounds import MAX_TEXT_LENGTH
from incident_intake.integrations import Integration

__all__ = ["PayloadError", "clean_text", "parse_time", "region_of", "severity_of"]

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: Alertmanager's endsAt of a firing alert


class PayloadError(ValueError):
    """The sender's payload is unusable; `status` is the HTTP answer (400 malformed, 422 unmappable)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def clean_text(value: object, limit: int = MAX_TEXT_LENGTH) -> str:
    """`value` as contract text: control characters dropped, cut to `limit` characters."""
    text = _CONTROL.sub("", str(value)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_time(value: Any, where: str, default: datetime | None = None) -> datetime:
    """An RFC 3339 time of the payload as an aware UTC datetime (`default` when absent or Go's zero)."""
    if value in (None, "", _ZERO_TIME):
        if default is None:
            raise PayloadError(f"{where}: a time is required")
        return default
    if not isinstance(value, str):
        raise PayloadError(f"{where}: expected an RFC 3339 time string, got {type(value).__name__}")
    text = value.strip()
    # Python < 3.12 wants at most 6 fraction digits (Go writes 9) and `+00:00` rather than `+0000`
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.replace("Z", "+00:00").replace("z", "+00:00"))
    text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise PayloadError(f"{where}: {value!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise PayloadError(f"{where}: {value!r} has no UTC offset")
    if not 2000 <= parsed.year <= 2099:
        if default is not None:
            return default
        raise PayloadError(f"{where}: year {parsed.year} is outside 2000..2099")
    return parsed.astimezone(UTC)


def severity_of(integration: Integration, raw: object) -> str:
    """The contract severity (critical/high/low) of a monitor's severity value, by the integration's map."""
    if raw is None or raw == "":
        return integration.severity_default
    return integration.severity_map.get(str(raw).lower(), integration.severity_default)


def region_of(integration: Integration, labels: dict[str, Any]) -> str:
    """The region of an alert: fixed, or its label (mapped), or the default; 422 when none applies."""
    if integration.region_label is None:
        assert integration.region is not None
        return integration.region
    raw = labels.get(integration.region_label)
    if raw is not None:
        value = str(raw).lower()
        value = integration.region_map.get(value, value)
        if value in ("au", "us", "uk"):
            return value
    if integration.region is not None:
        return integration.region
    raise PayloadError(
        f"label {integration.region_label!r} is {raw!r}: not a region (au, us, uk) and the integration "
        f"{integration.name!r} has no default region",
        422,
    )

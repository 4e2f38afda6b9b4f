"""Input CloudEvents as every channel builds them: `incidents publish`, the intake, the console."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from incident_contracts.decode import parse_event

__all__ = ["input_event"]


def input_event(
    event_type: str,
    incident: str,
    *,
    source: str,
    event_id: str,
    data: Mapping[str, Any],
    time: datetime | None = None,
    extensions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The structured CloudEvent `incident.<event_type>` (or `event_type` when it is already the
    full type), `data` without its null fields, `time` in UTC (default now), checked against the
    contract: raises `InputError` for what the engine would dead-letter, so no channel publishes it."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": event_type if event_type.startswith("incident.") else f"incident.{event_type}",
        "subject": incident,
        "time": (time or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": {k: v for k, v in data.items() if v is not None},
        **(extensions or {}),
    }
    parse_event(orjson.dumps(event))
    return event

"""Helpers of the SLA domain tests: build input events, run scenarios on the virtual clock."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from incident_contracts import CloudEvent, OutputEvent, parse_event
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.simulate import run_simulation

ZONES = {
    "au": ZoneInfo("Australia/Sydney"),
    "us": ZoneInfo("America/New_York"),
    "uk": ZoneInfo("Europe/London"),
}


@cache
def registry() -> PolicyRegistry:
    """The shipped policies."""
    return PolicyRegistry.load()


def domain(default: str = "livepro-1") -> SlaDomain:
    """A domain over the shipped policies."""
    return SlaDomain(registry(), default)


def utc(text: str) -> datetime:
    """An RFC 3339 instant, in UTC."""
    return datetime.fromisoformat(text).astimezone(UTC)


def local(region: str, text: str) -> datetime:
    """A wall-clock time of a region (`2025-03-07 19:00`), as a UTC instant."""
    return datetime.fromisoformat(text).replace(tzinfo=ZONES[region]).astimezone(UTC)


def wire(
    kind: str, at: datetime | str, subject: str = "INC-1", event_id: str | None = None, **data: Any
) -> bytes:
    """One input CloudEvent as structured JSON bytes (`kind` without the `incident.` prefix)."""
    when = at if isinstance(at, str) else at.isoformat()
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id or f"{subject}-{kind}-{when}",
        "source": "/channels/email",
        "type": f"incident.{kind}",
        "subject": subject,
        "time": when,
    }
    if data:
        envelope["data"] = data
    return orjson.dumps(envelope)


def event(
    kind: str, at: datetime | str, subject: str = "INC-1", event_id: str | None = None, **data: Any
) -> CloudEvent:
    """One parsed input CloudEvent."""
    return parse_event(wire(kind, at, subject, event_id, **data))


def simulate(lines: list[bytes], until: datetime | str, default: str = "livepro-1") -> list[OutputEvent]:
    """Run lines through `simulate` and return every output, in emission order."""
    outputs: list[OutputEvent] = []
    end = utc(until) if isinstance(until, str) else until
    run_simulation(lines, end, domain(default), outputs.extend)
    return outputs


def brief(output: OutputEvent) -> tuple[Any, ...]:
    """A compact view of an output for assertions: (type, emitted at, clock/to, threshold, due_at)."""
    data = output.data
    if output.type == "incident.state.changed":
        return ("state", output.time, data["from"], data["to"])
    if output.type == "incident.rejected":
        return ("rejected", output.time, data["reason"])
    kind = output.type.rsplit(".", 1)[-1]
    return (kind, output.time, data.get("clock"), data.get("threshold"), data["due_at"])


def sla_events(outputs: list[OutputEvent]) -> list[tuple[str, str | None, float | None, datetime]]:
    """(kind, clock, threshold, due_at) of the warnings, breaches and failover orders."""
    return [
        (o.type.rsplit(".", 1)[-1], o.data.get("clock"), o.data.get("threshold"), o.data["due_at"])
        for o in outputs
        if o.topic == "incidents.breaches"
    ]

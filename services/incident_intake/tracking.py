"""What an alert signal means for its incident (pure): which input events to publish, what to remember.

A signal is one sender's word on one alert key (an Alertmanager group or fingerprint, a PagerDuty
dedup key): trigger, acknowledge or resolve. What is known of the key (`Tracked`) comes from the
store and goes back there only after Kafka acknowledged the events, so a retry decides the same.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from incident_intake.keys import event_id, incident_id

__all__ = ["Decision", "Signal", "Tracked", "decide"]

Action = Literal["trigger", "acknowledge", "resolve"]


@dataclass(frozen=True)
class Signal:
    """One alert key's news from a sender, already mapped to the contract's vocabulary."""

    key: str
    action: Action
    time: datetime  # when it happened (startsAt of a trigger, endsAt of a resolve), aware
    starts_at: str = ""  # the sender's own start mark, part of a new incident's id
    summary: str = ""
    severity: str = "high"
    region: str | None = None
    digest: str = ""  # what the alert looks like now; a change while open is an incident.updated
    note: str = ""  # the update's note when `digest` changed


@dataclass(frozen=True)
class Tracked:
    """What the store knows of an alert key: its current incident and whether it is open."""

    incident_id: str | None = None
    open: bool = False
    acknowledged: bool = False
    digest: str = ""
    updates: int = 0
    generation: int = 0  # incidents opened for this key so far
    opened_at: datetime | None = None


@dataclass(frozen=True)
class Decision:
    """The input events to publish (CloudEvent fields without envelope constants) and the new state."""

    events: list[dict[str, Any]]
    tracked: Tracked
    outcome: str  # reported | updated | acknowledged | restored | unchanged | ignored


def _event(kind: str, incident: str, time: datetime, eid: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"type": f"incident.{kind}", "subject": incident, "time": time, "id": eid, "data": data}


def decide(integration: str, policy: str | None, signal: Signal, tracked: Tracked, now: datetime) -> Decision:
    """The events `signal` makes for an alert key in state `tracked`, and the state after them."""
    if signal.action == "trigger":
        return _trigger(integration, policy, signal, tracked, now)
    if not tracked.open or tracked.incident_id is None:
        # PagerDuty drops an acknowledge/resolve of no open alert; so do we (nothing to change)
        return Decision([], tracked, "ignored")
    incident = tracked.incident_id
    if signal.action == "acknowledge":
        if tracked.acknowledged:
            return Decision([], tracked, "unchanged")
        event = _event("acknowledged", incident, now, event_id(incident, "acknowledged"), {})
        return Decision([event], replace(tracked, acknowledged=True), "acknowledged")
    # restored: never before the incident opened, never in the future (a sender's clock ahead)
    time = min(signal.time, now)
    if tracked.opened_at is not None:
        time = max(time, tracked.opened_at)
    data = {"note": signal.note} if signal.note else {}
    event = _event("restored", incident, time, event_id(incident, "restored"), data)
    return Decision([event], replace(tracked, open=False), "restored")


def _trigger(
    integration: str, policy: str | None, signal: Signal, tracked: Tracked, now: datetime
) -> Decision:
    if tracked.open and tracked.incident_id is not None:
        if signal.digest == tracked.digest:
            return Decision([], tracked, "unchanged")  # a repeat (repeat_interval, a sender's retry)
        incident, count = tracked.incident_id, tracked.updates + 1
        note = signal.note or signal.summary or "the alert changed"
        event = _event(
            "updated", incident, now, event_id(incident, "updated", count, signal.digest), {"note": note}
        )
        return Decision([event], replace(tracked, digest=signal.digest, updates=count), "updated")
    generation = tracked.generation + 1
    incident = incident_id(integration, signal.key, generation, signal.starts_at)
    time = min(signal.time, now)  # a sender's clock ahead must not make the engine refuse the event
    data: dict[str, Any] = {"severity": signal.severity, "region": signal.region, "summary": signal.summary}
    if policy:
        data["policy"] = policy
    event = _event("reported", incident, time, event_id(incident, "reported"), data)
    opened = Tracked(incident, True, False, signal.digest, 0, generation, time)
    return Decision([event], opened, "reported")

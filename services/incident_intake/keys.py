"""Deterministic incident and event ids: a sender's retry of the same notification is the same event."""

from __future__ import annotations

from incident_contracts import stable_id

__all__ = ["digest", "event_id", "incident_id"]

_SEPARATOR = "\x1f"  # never inside a key (unit separator): "a|b"+"c" and "a"+"b|c" stay distinct


def digest(*parts: object) -> str:
    """A short stable hash of `parts` (what an alert looks like now, a payload without a key)."""
    return stable_id(_SEPARATOR.join(map(str, parts)))[:16]


def incident_id(integration: str, alert_key: str, generation: int, starts_at: str) -> str:
    """The incident of the `generation`-th opening of `alert_key` (`starts_at` as the sender gave it)."""
    hashed = stable_id(_SEPARATOR.join((integration, alert_key, str(generation), starts_at)))
    return f"{integration}-{hashed[:20]}"


def event_id(incident: str, what: str, *parts: object) -> str:
    """The id of the input event `what` (reported, updated, …) of `incident`."""
    return stable_id(_SEPARATOR.join((incident, what, *map(str, parts))))

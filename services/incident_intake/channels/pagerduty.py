"""PagerDuty Events API v2 (`POST /v2/enqueue`): any tool that pages PagerDuty can page the engine.

`routing_key` names the integration, `event_action` trigger/acknowledge/resolve becomes
incident.reported (or .updated when the open alert changed)/.acknowledged/.restored, and
`dedup_key` is the alert key. Answers are PagerDuty's own: 202 `{status, message, dedup_key}`,
400 `{status: "invalid event", message, errors}`, 429 and 5xx when the sender should retry.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from incident_intake.channels.common import PayloadError, clean_text, parse_time, region_of, severity_of
from incident_intake.integrations import Integration
from incident_intake.keys import digest
from incident_intake.tracking import Signal

__all__ = ["InvalidEvent", "PagerDutyEvent", "accepted", "invalid", "parse_event", "signal"]

_ACTIONS = {"trigger": "trigger", "acknowledge": "acknowledge", "resolve": "resolve"}
_SEVERITIES = ("critical", "error", "warning", "info")


class InvalidEvent(PayloadError):
    """An event PagerDuty would refuse with 400; `errors` lists every problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors), 400)
        self.errors = errors


@dataclass(frozen=True)
class PagerDutyEvent:
    """A checked Events v2 event."""

    routing_key: str
    action: str
    dedup_key: str
    payload: dict[str, Any]


def parse_event(body: Any) -> PagerDutyEvent:
    """Check an Events v2 body as PagerDuty does; every problem in one InvalidEvent."""
    if not isinstance(body, dict):
        raise InvalidEvent(["Event object is invalid: the body must be a JSON object"])
    errors = []
    routing_key = body.get("routing_key")
    if not isinstance(routing_key, str) or not routing_key:
        errors.append("'routing_key' is missing or blank")
    action = body.get("event_action")
    if action not in _ACTIONS:
        errors.append("'event_action' is invalid (must be one of: trigger, acknowledge, resolve)")
    dedup_key = body.get("dedup_key")
    if dedup_key is not None and (not isinstance(dedup_key, str) or not 0 < len(dedup_key) <= 255):
        errors.append("'dedup_key' must be a string of 1 to 255 characters")
    if action in ("acknowledge", "resolve") and not dedup_key:
        errors.append(f"'dedup_key' is required for event_action '{action}'")
    payload = body.get("payload")
    if action == "trigger":
        if not isinstance(payload, dict):
            errors.append("'payload' is missing or not an object")
        else:
            summary = payload.get("summary")
            if not isinstance(summary, str) or not summary.strip():
                errors.append("'payload.summary' is missing or blank")
            elif len(summary) > 1024:
                errors.append("'payload.summary' is longer than 1024 characters")
            if not isinstance(payload.get("source"), str) or not payload["source"].strip():
                errors.append("'payload.source' is missing or blank")
            if payload.get("severity") not in _SEVERITIES:
                errors.append(
                    "'payload.severity' is invalid (must be one of: critical, error, warning, info)"
                )
            if payload.get("custom_details") is not None and not isinstance(payload["custom_details"], dict):
                errors.append("'payload.custom_details' must be an object")
    if errors:
        raise InvalidEvent(errors)
    if not dedup_key:
        # PagerDuty makes a random key; ours comes from the event, so a retry is the same alert
        dedup_key = digest(orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode())
    return PagerDutyEvent(
        str(routing_key), str(action), str(dedup_key), payload if isinstance(payload, dict) else {}
    )


def signal(integration: Integration, event: PagerDutyEvent, now: datetime) -> Signal:
    """The signal of a checked event; the region from `payload.custom_details[label]` when configured."""
    payload = event.payload
    if event.action != "trigger":
        note = f"{event.action}d through the PagerDuty Events API" if event.action == "resolve" else ""
        return Signal(event.dedup_key, _ACTIONS[event.action], now, note=note)  # type: ignore[arg-type]
    try:
        time = parse_time(payload.get("timestamp"), "payload.timestamp", now)
    except PayloadError as exc:
        raise InvalidEvent([str(exc)]) from None
    summary = clean_text(payload["summary"])
    details = payload.get("custom_details") or {}
    return Signal(
        key=event.dedup_key,
        action="trigger",
        time=time,
        starts_at=str(payload.get("timestamp") or ""),
        summary=summary,
        severity=severity_of(integration, payload["severity"]),
        region=region_of(integration, details),
        digest=digest(summary, payload["severity"], payload["source"]),
        note=summary,
    )


def accepted(dedup_key: str) -> dict[str, str]:
    """PagerDuty's 202 body."""
    return {"status": "success", "message": "Event processed", "dedup_key": dedup_key}


def invalid(errors: list[str]) -> dict[str, Any]:
    """PagerDuty's 400 body."""
    return {"status": "invalid event", "message": "Event object is invalid", "errors": errors}

"""Builders of the output CloudEvents, with their deterministic ids."""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime
from typing import Any

from incident_contracts.constants import (
    FAILOVER_REQUIRED,
    INCIDENT_REJECTED,
    SLA_BREACHED,
    SLA_RETRACTED,
    SLA_WARNING,
    STATE_CHANGED,
)
from incident_contracts.envelope import OutputEvent, new_id_digest, stable_id
from incident_contracts.errors import InputError
from incident_engine.domain.model import BREACH, WARNING, ClockState, Incident, Timer


def state_changed(
    incident: Incident, from_state: str | None, cause: str, now: datetime, source: str | None = None
) -> OutputEvent:
    """`incident.state.changed`; its id derives from (incident, cause event).

    The cause event is (source, id), as CloudEvents identifies it: two channels may both send an
    event `5` for one incident, and both transitions must reach downstream under their own ids. A
    creation (no `source`) keeps the id of (incident, cause id): an incident is created only once.
    """
    incident_id = incident.id
    name = f"{incident_id}/state/{cause}" if source is None else f"{incident_id}/state/{cause}/{source}"
    digest = new_id_digest()  # = stable_id(name), one call less
    digest.update(name.encode())
    return OutputEvent(
        id=digest.hexdigest(),
        type=STATE_CHANGED,
        subject=incident_id,
        time=now,
        data={
            "from": from_state,
            "to": incident.state,
            "cause": cause,
            "policy": incident.policy,
            "severity": incident.severity,
            "region": incident.region,
        },
    )


def _deadline(incident: Incident, clock: str, cycle: int) -> datetime | None:
    """The breach moment of the clock cycle a warning belongs to (None if that cycle is gone)."""
    state = incident.clocks.get(clock)
    return state.due_at if state is not None and state.cycle == cycle else None


_THRESHOLD_TEXT: dict[float, str] = {}  # f"{threshold}" of the thresholds met: formatting floats costs


def timer_fired(incident: Incident, timer: Timer, now: datetime) -> OutputEvent:
    """The warning, breach or failover order of a due timer; `due_at` stays the true due moment."""
    due, clock, kind, threshold, cycle, incident_id = timer
    if kind == WARNING:
        text = _THRESHOLD_TEXT.get(threshold) if type(threshold) is float else None
        if text is None:
            text = f"{threshold}"
            if type(threshold) is float:
                _THRESHOLD_TEXT[threshold] = text
        digest = new_id_digest()  # = stable_id(...) = Timer.output_id, one call less
        digest.update(f"{incident_id}/{clock}/{cycle}/warning/{text}".encode())
        return OutputEvent(
            id=digest.hexdigest(),
            type=SLA_WARNING,
            subject=incident.id,
            time=now,
            data={
                "clock": clock,
                "threshold": threshold,
                "due_at": due,
                "deadline": _deadline(incident, clock, cycle),
                "policy": incident.policy,
                "severity": incident.severity,
                "region": incident.region,
                "summary": incident.summary,
                "source": incident.source,
            },
        )
    data: dict[str, Any] = {
        "due_at": due,
        "policy": incident.policy,
        "severity": incident.severity,
        "region": incident.region,
        "summary": incident.summary,
        "source": incident.source,
    }
    if kind == BREACH:
        event_type = SLA_BREACHED
        data = {"clock": clock, **data}  # key order unchanged: the clock first
    else:
        event_type = FAILOVER_REQUIRED
    digest = new_id_digest()  # = stable_id(...) = Timer.output_id, one call less
    digest.update(f"{incident_id}/{clock}/{cycle}/{kind}".encode())
    return OutputEvent(
        id=digest.hexdigest(),
        type=event_type,
        subject=incident.id,
        time=now,
        data=data,
    )


def retracted(
    incident: Incident,
    clock_name: str,
    clock: ClockState,
    kind: str,
    stopped_at: datetime,
    cause: str,
    now: datetime,
) -> OutputEvent:
    """`incident.sla.retracted`: the breach (or failover order, by `kind`) of a clock cycle was sent,
    but the event `cause`, read later, proves the clock stopped in time. Its id derives from the
    retracted output's, which it names."""
    retracts = stable_id(f"{incident.id}/{clock_name}/{clock.cycle}/{kind}")  # = Timer.output_id
    return OutputEvent(
        id=stable_id(f"{incident.id}/{clock_name}/{clock.cycle}/{kind}/retracted"),
        type=SLA_RETRACTED,
        subject=incident.id,
        time=now,
        data={
            "retracts": retracts,
            "retracted_type": SLA_BREACHED if kind == BREACH else FAILOVER_REQUIRED,
            "clock": clock_name,
            "due_at": clock.due_at,
            "stopped_at": stopped_at,
            "cause": cause,
            "policy": incident.policy,
            "severity": incident.severity,
            "region": incident.region,
        },
    )


# A dead letter quotes at most this much of its original (and says so, with the size and a digest),
# so it always fits its topic whatever came in; the detail is bounded likewise.
ORIGINAL_QUOTE_LIMIT = 64 * 1024
DETAIL_LIMIT = 4 * 1024


def _quote(raw: bytes, cut: bool = False) -> tuple[str, str]:
    """(text, encoding) of bytes: the text when UTF-8 (when `cut`, a character split at the end is
    dropped), else base64."""
    for drop in range(4 if cut else 1):
        try:
            return raw[: len(raw) - drop].decode(), "utf-8"
        except UnicodeDecodeError:
            continue
    return base64.b64encode(raw).decode(), "base64"


def rejected(
    reason: str,
    detail: str,
    original: bytes | str,
    now: datetime,
    *,
    subject: str | None,
    origin: str | None = None,
) -> OutputEvent:
    """`incident.rejected`; its id derives from (origin, reason), origin defaulting to a hash of the bytes.

    Quotes at most ORIGINAL_QUOTE_LIMIT bytes of the original (with its size and SHA-256 when cut)."""
    raw = original.encode() if isinstance(original, str) else original
    digest = None
    if len(raw) > ORIGINAL_QUOTE_LIMIT or origin is None:
        digest = hashlib.sha256(raw).hexdigest()
    origin = origin or "sha256:" + str(digest)
    if len(detail) > DETAIL_LIMIT:
        detail = detail[:DETAIL_LIMIT] + f"… ({len(detail)} characters in all)"
    data: dict[str, Any] = {"reason": reason, "detail": detail}
    if len(raw) > ORIGINAL_QUOTE_LIMIT:
        data["original"], data["original_encoding"] = _quote(raw[:ORIGINAL_QUOTE_LIMIT], cut=True)
        data["original_size"], data["original_sha256"] = len(raw), digest
    else:
        data["original"], data["original_encoding"] = _quote(raw)
    return OutputEvent(
        id=stable_id(f"{origin}/rejected/{reason}"),
        type=INCIDENT_REJECTED,
        subject=subject,
        time=now,
        data=data,
    )


def reject_input(
    error: InputError,
    raw: bytes,
    now: datetime,
    *,
    key: bytes | str | None = None,
    origin: str | None = None,
) -> OutputEvent:
    """The rejection of bytes that did not parse (DecodeError/SchemaError). The subject is the Kafka key
    when there is one; `origin` (e.g. "topic/partition/offset") defaults to the event id, else a hash."""
    if isinstance(key, bytes):
        try:
            key = key.decode()
        except UnicodeDecodeError:
            key = None
    return rejected(
        error.reason,
        error.detail,
        raw,
        now,
        subject=key or error.subject,
        origin=origin or error.event_id,
    )

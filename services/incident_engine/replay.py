"""Rebuild incident state from the event log alone, through the same domain the engine runs."""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from incident_contracts import validate_envelope
from incident_engine.domain import Incident, SlaDomain


@dataclass
class Rebuilt:
    """Replayed state of every incident, with the count of operations applied."""

    incidents: dict[str, Incident] = field(default_factory=dict)
    events: int = 0
    firings: int = 0


def rebuild(
    domain: SlaDomain,
    log_rows: Iterable[Mapping[str, Any]],
    firings: Iterable[tuple[str, datetime]] = (),
    *,
    as_of: datetime | None = None,
) -> Rebuilt:
    """Apply each incident's logged events and recorded timer firings in the order the engine did.

    Each event is handled with `now` = the moment the engine processed it, each firing at its moment,
    so the result equals the live projection; with `as_of`, only what happened by then, then the
    timers due by then fire.
    """
    ops: dict[str, list[tuple[datetime, int, int, Any]]] = defaultdict(list)
    for row in log_rows:
        if as_of is None or row["processed_at"] <= as_of:
            ops[row["incident_id"]].append((row["processed_at"], 0, row["seq"], row["envelope"]))
    for incident_id, fired_at in firings:
        if as_of is None or fired_at <= as_of:
            ops[incident_id].append((fired_at, 1, 0, None))
    result = Rebuilt()
    for incident_id, steps in ops.items():
        heapq.heapify(steps)
        incident: Incident | None = None
        while steps:
            moment, kind, _, envelope = heapq.heappop(steps)
            if kind == 0:
                event = validate_envelope(
                    orjson.loads(envelope) if isinstance(envelope, (bytes, str)) else envelope
                )
                incident = domain.handle(incident, event, moment).incident
                result.events += 1
            elif incident is not None:
                domain.fire_due(incident, moment)
                result.firings += 1
        if incident is not None:
            if as_of is not None:
                domain.fire_due(incident, as_of)
            result.incidents[incident_id] = incident
    return result


def differences(
    rebuilt: Mapping[str, Incident], live: Mapping[str, Mapping[str, Any]], timers: Mapping[str, datetime]
) -> list[str]:
    """Where the live projections (incident bodies, timer rows) differ from the replayed state."""
    problems = []
    for incident_id in sorted(set(rebuilt) | set(live)):
        replayed = rebuilt.get(incident_id)
        stored = live.get(incident_id)
        if replayed is None or stored is None:
            where = "the projection" if stored is None else "the log"
            problems.append(f"{incident_id}: missing from {where}")
            continue
        mine = Incident.from_json(dict(stored))
        if mine.to_json() != replayed.to_json():
            problems.append(f"{incident_id}: projection differs from replay")
        if replayed.next_due != timers.get(incident_id):
            problems.append(
                f"{incident_id}: timer row {timers.get(incident_id)} != replayed {replayed.next_due}"
            )
    return problems

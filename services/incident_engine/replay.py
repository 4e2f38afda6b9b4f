"""Rebuild incident state from the event log alone, through the same domain the engine runs.

Each logged event is applied with `now` = the moment the engine processed it (`processed_at`).
Between events, time passes in one of two ways:
- exact (the default): timers fire as the engine recorded in `timer_firings` (when, and under which
  horizons), so the result is what the live engine had, outputs included;
- on time (`on_time_until`): every timer fires at its own due moment, before each event only what
  was due before the event's own time (as `simulate` does), as an engine that is never late would
  have done. A what-if uses it on both sides of its comparison, so the difference it shows comes
  from the policies alone, never from when the live engine happened to read the events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import msgspec

from incident_contracts import validate_envelope
from incident_contracts.constants import INCIDENT_REPORTED
from incident_contracts.envelope import OutputEvent
from incident_contracts.fast import FastEvent, decode_fast
from incident_contracts.models import INPUT_ADAPTER, CloudEvent
from incident_engine.domain import Incident, SlaDomain, Timer
from incident_engine.domain.clocks import ClockPlan

# A logged step: (processed_at, envelope, ...) — a tuple or a database record whose first two fields
# are the moment the engine applied the event and the envelope (JSON text, bytes or a decoded dict).
Step = Sequence[Any]
# A recorded timer firing: when the engine fired (emission moment), what was due by `until` fired,
# breaches and failover orders only by `breach_until` (both None in rows recorded before horizons
# were: then everything due by the moment fired). A bare datetime is the same as (moment, None, None).
Firing = datetime | tuple[datetime, datetime | None, datetime | None]


@dataclass
class Rebuilt:
    """Replayed state of every incident, with the count of operations applied."""

    incidents: dict[str, Incident] = field(default_factory=dict)
    events: int = 0
    firings: int = 0


def parse_logged(envelope: Any) -> CloudEvent:
    """The CloudEvent of a logged envelope. JSON text or bytes of the common shape take msgspec's fast
    path (as in `simulate`; the domain reads both kinds alike), anything else the pydantic models."""
    if isinstance(envelope, (str, bytes)):
        raw = envelope.encode() if isinstance(envelope, str) else envelope
        fast = decode_fast(raw)
        if fast is not None:
            return cast(CloudEvent, fast)  # duck-typed: the domain reads id, type, subject, time, data
        return INPUT_ADAPTER.validate_json(raw)
    return validate_envelope(envelope)


def pin_policy(event: CloudEvent, policy: str) -> CloudEvent:
    """The same `incident.reported` event naming `policy`: what-if pins every incident to it."""
    data = event.data  # type: ignore[attr-defined]
    if isinstance(event, FastEvent):
        pinned = msgspec.structs.replace(event, data=msgspec.structs.replace(data, policy=policy))
        return cast(CloudEvent, pinned)
    return event.model_copy(update={"data": data.model_copy(update={"policy": policy})})


def replay_incident(
    domain: SlaDomain,
    steps: Sequence[Step],
    firings: Sequence[Firing] = (),
    *,
    as_of: datetime | None = None,
    policy_override: str | None = None,
    on_time_until: datetime | None = None,
    outputs: list[OutputEvent] | None = None,
    fired: list[Timer] | None = None,
) -> tuple[Incident | None, int]:
    """Replay one incident's logged steps (in seq order); return its state and how many steps applied.

    Exact mode merges the recorded `firings` (sorted); at equal moments the event goes first, as in
    the engine's batches. With `as_of`, nothing after it is applied. With `on_time_until`, timers
    fire at their due moments up to that horizon instead. Outputs are appended to `outputs` (none is
    built without it), and the timers that fire to `fired`.
    """
    apply = domain.apply
    on_time = on_time_until is not None
    incident: Incident | None = None
    plan: ClockPlan | None = None
    applied = done = 0
    pending = len(firings)
    for step in steps:
        moment = step[0]
        if as_of is not None and moment > as_of:
            break
        event = parse_logged(step[1])
        if plan is not None:
            assert incident is not None  # the two are set together
            if on_time:
                # Event time, as the engine decides: what was due before the event happened (never
                # before the previous one, never after the engine read it), not when it was read.
                at = min(max(event.time, incident.last_event_at), moment)
                _fire_on_time(plan, incident, at, outputs, fired, strict=True)
            else:
                while done < pending and fired_at(firings[done]) < moment:
                    _fire(plan, incident, firings[done], outputs, fired)
                    done += 1
        else:
            while done < pending and fired_at(firings[done]) < moment:
                done += 1  # a firing before the report cannot concern this incident
        if policy_override is not None and event.type == INCIDENT_REPORTED:
            event = pin_policy(event, policy_override)
        result, _ = apply(incident, event, moment, None, outputs, fired)
        if result is not None and incident is None:
            incident, plan = result, domain.plan(result)
        applied += 1
    if plan is not None:
        assert incident is not None
        if on_time_until is not None:
            horizon = min(on_time_until, as_of) if as_of is not None else on_time_until
            _fire_on_time(plan, incident, horizon, outputs, fired, strict=False)
        else:
            for firing in firings[done:]:
                if as_of is not None and fired_at(firing) > as_of:
                    break
                _fire(plan, incident, firing, outputs, fired)
    return incident, applied


def fired_at(firing: Firing) -> datetime:
    """When the engine fired (the emission moment), whichever form the firing has."""
    return firing if isinstance(firing, datetime) else firing[0]


def _fire(
    plan: ClockPlan,
    incident: Incident,
    firing: Firing,
    outputs: list[OutputEvent] | None,
    fired: list[Timer] | None,
) -> None:
    """What the engine fired then: `SlaDomain.fire_due(incident, now, until=, breach_until=)`."""
    breach_until: datetime | None = None
    if isinstance(firing, datetime):
        now = until = firing
    else:
        now, recorded, breach_until = firing
        until = recorded or now  # rows from before horizons were recorded: all that was due by then
    timers = incident.timers
    if timers and timers[0][0] <= until:
        plan.fire(incident, until, now, outputs, fired, breach_until)


def _fire_on_time(
    plan: ClockPlan,
    incident: Incident,
    until: datetime,
    outputs: list[OutputEvent] | None,
    fired: list[Timer] | None,
    *,
    strict: bool,
) -> None:
    """Fire each pending timer at its own due moment, up to `until` (excluded when `strict`)."""
    while incident.timers:
        due = incident.timers[0][0]
        if due > until or (strict and due == until):
            return
        plan.fire(incident, due, due, outputs, fired)


def rebuild(
    domain: SlaDomain,
    log_rows: Iterable[Mapping[str, Any]],
    firings: Iterable[tuple[str, datetime] | tuple[str, datetime, datetime | None, datetime | None]] = (),
    *,
    as_of: datetime | None = None,
    policy_override: str | None = None,
) -> Rebuilt:
    """Apply each incident's logged events and recorded timer firings in the order the engine did.

    Rows may come in any order (they are grouped by incident and sorted by seq). The result equals
    the live projection; with `as_of`, it is what the engine had at that instant (a timer that was
    due but not yet fired then is still pending). `policy_override` pins every incident to another
    policy (recorded firings still apply: for a fair what-if see `incident_engine.reporting.whatif`).
    """
    events: dict[str, list[tuple[int, datetime, Any]]] = defaultdict(list)
    for row in log_rows:
        events[row["incident_id"]].append((row["seq"], row["processed_at"], row["envelope"]))
    fired: dict[str, list[Firing]] = defaultdict(list)
    for incident_id, *firing in firings:
        fired[incident_id].append(tuple(firing) if len(firing) > 1 else firing[0])  # type: ignore[arg-type]
    result = Rebuilt()
    for incident_id, rows in events.items():
        rows.sort(key=lambda r: r[0])
        moments = sorted(fired.get(incident_id, ()), key=fired_at)
        steps = [(moment, envelope) for _, moment, envelope in rows]
        incident, applied = replay_incident(
            domain, steps, moments, as_of=as_of, policy_override=policy_override
        )
        result.events += applied
        result.firings += sum(1 for m in moments if as_of is None or fired_at(m) <= as_of)
        if incident is not None:
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
        theirs = replayed.to_json()
        if "summary" not in stored:
            # Stored by an engine from before the summary and source were kept, and not filled in by
            # migration 0010 (its report already archived): not a difference. A null stored where
            # the log has a summary is one: the projection lost what the log holds.
            theirs.update(summary=None, source=None)
        if mine.to_json() != theirs:
            problems.append(f"{incident_id}: projection differs from replay")
        if replayed.next_due != timers.get(incident_id):
            problems.append(
                f"{incident_id}: timer row {timers.get(incident_id)} != replayed {replayed.next_due}"
            )
    return problems

"""The decision function of the engine: one input event (or the passing of time) -> new state + outputs."""

from __future__ import annotations

from datetime import UTC, datetime

from incident_contracts.constants import (
    INPUT_TYPES,
    REASON_DUPLICATE,
    REASON_SCHEMA,
    REASON_UNKNOWN_INCIDENT,
    STATE_REPORTED,
)
from incident_contracts.envelope import OutputEvent
from incident_contracts.models import CloudEvent
from incident_engine.domain.calendar import Calendar
from incident_engine.domain.clocks import apply_trigger, fire_timers
from incident_engine.domain.lifecycle import TRIGGER_REPORTED, Outcome, transition, trigger_of
from incident_engine.domain.model import Decision, Incident
from incident_engine.domain.outputs import rejected, state_changed
from incident_engine.domain.policy import DEFAULT_POLICY, ClockSpec, PolicyRegistry


class SlaDomain:
    """Lifecycle + SLA clocks under the loaded policies. Pure: `now` is always an argument.

    `handle` and `fire_due` update the given incident in place and return it in the Decision.
    """

    def __init__(self, policies: PolicyRegistry, default_policy: str = DEFAULT_POLICY) -> None:
        policies.get(default_policy)  # fail fast on an unknown default
        self.policies = policies
        self.default_policy = default_policy
        self._plans: dict[tuple[str, str, str], tuple[dict[str, ClockSpec], Calendar]] = {}

    def handle(
        self, incident: Incident | None, event: CloudEvent, now: datetime, raw: bytes | None = None
    ) -> Decision:
        """Apply one validated input event to its incident (None when unknown) at processing time `now`.

        `raw` is the message as received, quoted in a rejection (else the event is re-serialized).
        """
        trigger = _TRIGGERS.get(event.type) or trigger_of(event.type)
        if incident is None:
            if trigger == TRIGGER_REPORTED:
                return self._create(event, now, raw)
            return Decision(None, False, [self._reject(event, REASON_UNKNOWN_INCIDENT, raw, now)])
        if trigger == TRIGGER_REPORTED:
            detail = "the incident is already reported"
            return self._refuse(incident, event, REASON_DUPLICATE, detail, raw, now)
        outcome, dest = transition(incident.state, trigger)
        if outcome == Outcome.DUPLICATE or outcome == Outcome.INVALID:
            detail = f"{event.type} is not allowed in state {incident.state}"
            return self._refuse(incident, event, outcome, detail, raw, now)
        at = event.time.astimezone(UTC)
        if at < incident.last_event_at:
            at = incident.last_event_at  # a late event never moves a clock back
        outputs: list[OutputEvent] = []
        plan = self._plan(incident)
        timers = incident.timers
        if timers and timers[0].due_at <= at:
            fire_timers(incident, at, now, outputs, *plan)  # what was overdue when the event happened
        if dest is not None:
            before = incident.state
            incident.state = dest
            outputs.append(state_changed(incident, before, event.id, now))
        apply_trigger(incident, trigger, at, *plan)
        incident.seq += 1
        incident.last_event_at = at
        timers = incident.timers
        if timers and timers[0].due_at <= now:
            fire_timers(incident, now, now, outputs, *plan)
        return Decision(incident, True, outputs)

    def fire_due(self, incident: Incident, now: datetime) -> Decision:
        """Fire every pending timer due at or before `now` (emission time `now`)."""
        outputs: list[OutputEvent] = []
        timers = incident.timers
        if timers and timers[0].due_at <= now:
            fire_timers(incident, now, now, outputs, *self._plan(incident))
        return Decision(incident, False, outputs)

    def _create(self, event: CloudEvent, now: datetime, raw: bytes | None) -> Decision:
        data = event.data  # type: ignore[attr-defined]
        policy = data.policy or self.default_policy
        if policy not in self.policies:
            detail = f"data.policy: unknown policy {policy!r} (known: {', '.join(self.policies.names())})"
            return Decision(None, False, [self._reject(event, REASON_SCHEMA, raw, now, detail)])
        at = event.time.astimezone(UTC)
        incident = Incident(event.subject, STATE_REPORTED, policy, data.severity, data.region, at, at, seq=1)
        outputs = [state_changed(incident, None, event.id, now)]
        plan = self._plan(incident)
        apply_trigger(incident, TRIGGER_REPORTED, at, *plan)
        fire_timers(incident, now, now, outputs, *plan)
        return Decision(incident, True, outputs)

    def _plan(self, incident: Incident) -> tuple[dict[str, ClockSpec], Calendar]:
        """The clock specs and calendar of an incident's (policy, severity, region), memoized."""
        key = (incident.policy, incident.severity, incident.region)
        plan = self._plans.get(key)
        if plan is None:
            policy = self.policies.get(incident.policy)
            specs = policy.rules(incident.severity).clocks
            plan = self._plans[key] = (specs, policy.calendar(incident.severity, incident.region))
        return plan

    def _refuse(
        self,
        incident: Incident,
        event: CloudEvent,
        reason: str,
        detail: str,
        raw: bytes | None,
        now: datetime,
    ) -> Decision:
        outputs: list[OutputEvent] = []
        fire_timers(incident, now, now, outputs, *self._plan(incident))
        outputs.append(self._reject(event, reason, raw, now, detail))
        return Decision(incident, False, outputs)

    @staticmethod
    def _reject(
        event: CloudEvent, reason: str, raw: bytes | None, now: datetime, detail: str | None = None
    ) -> OutputEvent:
        if detail is None:
            detail = f"no incident {event.subject!r} has been reported"
        original = raw if raw is not None else event.model_dump_json(by_alias=True, exclude_unset=True)
        return rejected(reason, detail, original, now, subject=event.subject, origin=event.id)


_TRIGGERS = {event_type: trigger_of(event_type) for event_type in INPUT_TYPES}

"""The decision function of the engine: one input event (or the passing of time) -> new state + outputs."""

from __future__ import annotations

from datetime import UTC, datetime

from incident_contracts.constants import (
    INPUT_TYPES,
    REASON_DUPLICATE,
    REASON_SCHEMA,
    REASON_UNKNOWN_INCIDENT,
    STATE_REPORTED,
    STATES,
)
from incident_contracts.envelope import OutputEvent
from incident_contracts.models import CloudEvent
from incident_engine.domain.clocks import ClockPlan
from incident_engine.domain.lifecycle import TRIGGER_REPORTED, TRIGGERS, Outcome, transition, trigger_of
from incident_engine.domain.model import (
    BREACH,
    BREACHED,
    FAILOVER,
    MET,
    TICK,
    WARNING,
    ClockState,
    Decision,
    Incident,
    Timer,
)
from incident_engine.domain.outputs import rejected, retracted, state_changed
from incident_engine.domain.policy import DEFAULT_POLICY, PolicyRegistry


class SlaDomain:
    """Lifecycle + SLA clocks under the loaded policies. Pure: `now` is always an argument.

    `handle` and `fire_due` update the given incident in place and return it in the Decision.
    """

    def __init__(self, policies: PolicyRegistry, default_policy: str = DEFAULT_POLICY) -> None:
        policies.get(default_policy)  # fail fast on an unknown default
        self.policies = policies
        self.default_policy = default_policy
        self.plans: dict[tuple[str, str, str], ClockPlan] = {}  # by (policy, severity, region): plan()

    def handle(
        self, incident: Incident | None, event: CloudEvent, now: datetime, raw: bytes | None = None
    ) -> Decision:
        """Apply one validated input event to its incident (None when unknown) at processing time `now`.

        `raw` is the message as received, quoted in a rejection (else the event is re-serialized).
        """
        outputs: list[OutputEvent] = []
        incident, accepted = self.apply(incident, event, now, raw, outputs)
        return Decision(incident, accepted, outputs)

    def apply(
        self,
        incident: Incident | None,
        event: CloudEvent,
        now: datetime,
        raw: bytes | None,
        outputs: list[OutputEvent] | None,
        fired: list[Timer] | None = None,
    ) -> tuple[Incident | None, bool]:
        """`handle`, appending the outputs to `outputs`: (the incident, whether the event was accepted).

        For a caller that batches outputs (`simulate`); `event` may be any object with the attributes
        of a CloudEvent (e.g. a `FastEvent`, then with `raw`). A replay that needs no outputs passes
        None (none is built), and a `fired` list to receive the timers that fire instead.
        """
        event_type = event.type
        trigger, outcomes = _BY_TYPE.get(event_type) or _by_type(event_type)
        if incident is None:
            if trigger == TRIGGER_REPORTED:
                return self._create(event, now, raw, outputs, fired)
            if outputs is not None:
                outputs.append(self._reject(event, REASON_UNKNOWN_INCIDENT, raw, now))
            return None, False
        if trigger == TRIGGER_REPORTED:
            detail = "the incident is already reported"
            return self._refuse(incident, event, REASON_DUPLICATE, detail, raw, now, outputs, fired)
        state = incident.state
        outcome, dest = outcomes.get(state) or transition(state, trigger)
        if outcome == Outcome.DUPLICATE or outcome == Outcome.INVALID:
            detail = f"{event_type} is not allowed in state {state}"
            return self._refuse(incident, event, outcome, detail, raw, now, outputs, fired)
        at = event.time
        if at.tzinfo is not UTC:
            at = at.astimezone(UTC)
        stamped = at  # when it happened: what a retraction is judged on
        if at > now:
            at = now  # stamped ahead of the engine's clock (within the skew): time passes no faster
        if at < incident.last_event_at:
            at = incident.last_event_at  # a late event never moves a clock back
        plan = incident.plan
        if plan is None or plan.owner is not self:
            plan = self.plan(incident)
        timers = incident.timers
        if timers and timers[0][0] < at:
            # What was overdue when the event happened. Strictly before it: an event at a
            # threshold's very moment is in time and cancels it (the same rule as the timer path).
            plan.fire(incident, at - TICK, now, outputs, fired)
        breached = _breached_in_time(incident, stamped)
        if dest is not None:
            incident.state = dest
            if outputs is not None:
                outputs.append(state_changed(incident, state, event.id, now, event.source))
        plan.apply(incident, trigger, at)
        if breached:
            self._retract(incident, breached, stamped, event.id, now, outputs, fired)
        incident.seq += 1
        incident.last_event_at = at
        return incident, True

    @staticmethod
    def refuses(incident: Incident | None, event_type: str) -> bool:
        """Whether `apply` refuses an event of this type for this incident as it stands (a refusal
        changes nothing), as `apply` decides it."""
        trigger, outcomes = _BY_TYPE.get(event_type) or _by_type(event_type)
        if incident is None:
            return trigger != TRIGGER_REPORTED
        if trigger == TRIGGER_REPORTED:
            return True
        outcome, _ = outcomes.get(incident.state) or transition(incident.state, trigger)
        return outcome == Outcome.DUPLICATE or outcome == Outcome.INVALID

    def fire_due(
        self,
        incident: Incident,
        now: datetime,
        *,
        until: datetime | None = None,
        breach_until: datetime | None = None,
    ) -> Decision:
        """Fire every pending timer due at or before `until` (default `now`), emitting at `now`.

        Breaches and failover orders fire only when due by `breach_until` (default `until`).
        """
        outputs: list[OutputEvent] = []
        horizon = now if until is None else until
        timers = incident.timers
        if timers and timers[0][0] <= horizon:
            self.plan(incident).fire(incident, horizon, now, outputs, None, breach_until)
        return Decision(incident, False, outputs)

    def _retract(
        self,
        incident: Incident,
        breached: list[tuple[str, ClockState]],
        stamped: datetime,
        cause: str,
        now: datetime,
        outputs: list[OutputEvent] | None,
        fired: list[Timer] | None,
    ) -> None:
        """Breached clocks that the event stopped by their due moment were met: retract what was sent.

        The breach went out before the event was read (it was in flight past the grace); the clock's
        status says met, and each breach and failover order it emitted gets an `incident.sla.retracted`
        (a replay's `fired` list loses them: what a report counts is what stands).
        """
        failover = self.plan(incident).failover_clocks
        for name, clock in breached:
            if clock.stopped_at is None:
                continue  # this event does not stop that clock: the breach stands
            clock.status = MET
            if fired is not None:
                fired[:] = [
                    t for t in fired if not (t.clock == name and t.cycle == clock.cycle and t.kind != WARNING)
                ]
            if outputs is not None:
                outputs.append(retracted(incident, name, clock, BREACH, stamped, cause, now))
                if name in failover:
                    outputs.append(retracted(incident, name, clock, FAILOVER, stamped, cause, now))

    def _create(
        self,
        event: CloudEvent,
        now: datetime,
        raw: bytes | None,
        outputs: list[OutputEvent] | None,
        fired: list[Timer] | None,
    ) -> tuple[Incident | None, bool]:
        data = event.data  # type: ignore[attr-defined]
        policy = data.policy or self.default_policy
        if policy not in self.policies:
            if outputs is not None:
                detail = f"data.policy: unknown policy {policy!r} (known: {', '.join(self.policies.names())})"
                outputs.append(self._reject(event, REASON_SCHEMA, raw, now, detail))
            return None, False
        at = event.time
        if at.tzinfo is not UTC:
            at = at.astimezone(UTC)
        if at > now:
            at = now  # stamped ahead of the engine's clock (within the skew): clocks start now
        incident = Incident(event.subject, STATE_REPORTED, policy, data.severity, data.region, at, at, 1)
        incident.summary, incident.source = data.summary, event.source
        if outputs is not None:
            outputs.append(state_changed(incident, None, event.id, now))
        self.plan(incident).apply(incident, TRIGGER_REPORTED, at)
        return incident, True  # its timers fire on the timer path, once time has passed them

    def plan(self, incident: Incident) -> ClockPlan:
        """The clock plan of an incident's (policy, severity, region), memoized (and cached on the
        incident: `incident.plan`, when its `owner` is this domain, saves the look-up)."""
        plan = incident.plan
        if plan is not None and plan.owner is self:
            return plan
        key = (incident.policy, incident.severity, incident.region)
        plan = self.plans.get(key)
        if plan is None:
            policy = self.policies.get(incident.policy)
            specs = policy.rules(incident.severity).clocks
            calendar = policy.calendar(incident.severity, incident.region)
            plan = self.plans[key] = ClockPlan(specs, calendar, self)
        incident.plan = plan
        return plan

    def _refuse(
        self,
        incident: Incident,
        event: CloudEvent,
        reason: str,
        detail: str,
        raw: bytes | None,
        now: datetime,
        outputs: list[OutputEvent] | None,
        fired: list[Timer] | None,
    ) -> tuple[Incident, bool]:
        # A refused event changes nothing, and fires nothing: time is not its to move.
        if outputs is not None:
            outputs.append(self._reject(event, reason, raw, now, detail))
        return incident, False

    @staticmethod
    def _reject(
        event: CloudEvent, reason: str, raw: bytes | None, now: datetime, detail: str | None = None
    ) -> OutputEvent:
        if detail is None:
            detail = f"no incident {event.subject!r} has been reported"
        original = raw if raw is not None else event.model_dump_json(by_alias=True, exclude_unset=True)
        # The origin is the event's CloudEvents identity, (source, id): two channels' event "5"
        # refused alike are two dead letters, not one id that downstream deduplicates away.
        origin = f"{event.source} {event.id}"
        return rejected(reason, detail, original, now, subject=event.subject, origin=origin)


def _breached_in_time(incident: Incident, stamped: datetime) -> list[tuple[str, ClockState]]:
    """Running clocks that breached although an event stamped `stamped` (at or before their due
    moment) may still stop them: the breach was emitted before the event was read."""
    found: list[tuple[str, ClockState]] = []
    for name, clock in incident.clocks.items():
        if clock.status == BREACHED and clock.stopped_at is None and stamped <= clock.due_at:
            found.append((name, clock))
    return found


def _by_type(event_type: str) -> tuple[str, dict[str, tuple[str, str | None]]]:
    """The trigger of an input type and its outcome (with the state it leads to) in every state."""
    trigger = trigger_of(event_type)
    return trigger, {state: transition(state, trigger) for state in STATES if trigger in TRIGGERS}


_BY_TYPE = {event_type: _by_type(event_type) for event_type in INPUT_TYPES}

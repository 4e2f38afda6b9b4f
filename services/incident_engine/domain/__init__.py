"""The pure SLA domain: lifecycle, policies, business calendars, clocks and the decision function."""

from incident_contracts.envelope import OutputEvent
from incident_contracts.models import CloudEvent
from incident_engine.domain.calendar import AlwaysOpen, BusinessCalendar, Calendar
from incident_engine.domain.errors import (
    DecodeError,
    DomainError,
    InputError,
    PolicyError,
    SchemaError,
    UnknownPolicyError,
)
from incident_engine.domain.model import ClockState, Decision, Incident, Timer
from incident_engine.domain.outputs import reject_input
from incident_engine.domain.policy import DEFAULT_POLICY, Policy, PolicyRegistry
from incident_engine.domain.service import SlaDomain

__all__ = [
    "DEFAULT_POLICY",
    "AlwaysOpen",
    "BusinessCalendar",
    "Calendar",
    "ClockState",
    "CloudEvent",
    "Decision",
    "DecodeError",
    "DomainError",
    "Incident",
    "InputError",
    "OutputEvent",
    "Policy",
    "PolicyError",
    "PolicyRegistry",
    "SchemaError",
    "SlaDomain",
    "Timer",
    "UnknownPolicyError",
    "reject_input",
]

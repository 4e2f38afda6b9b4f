"""The wire contract: CloudEvent envelope, input/output models, topic and type names, schema export."""

from incident_contracts.constants import (
    TOPIC_BREACHES,
    TOPIC_EVENTS,
    TOPIC_REJECTED,
    TOPIC_STATE,
    TOPICS,
)
from incident_contracts.decode import parse_event, validate_envelope
from incident_contracts.envelope import OutputEvent, stable_id
from incident_contracts.errors import DecodeError, InputError, SchemaError
from incident_contracts.models import CloudEvent, InputEvent

__all__ = [
    "TOPICS",
    "TOPIC_BREACHES",
    "TOPIC_EVENTS",
    "TOPIC_REJECTED",
    "TOPIC_STATE",
    "CloudEvent",
    "DecodeError",
    "InputError",
    "InputEvent",
    "OutputEvent",
    "SchemaError",
    "parse_event",
    "stable_id",
    "validate_envelope",
]

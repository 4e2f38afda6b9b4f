"""Names of the wire contract (design §3): topics, event types, reasons, clocks, states, enums."""

from __future__ import annotations

from typing import Final

# Topics. The Kafka key is always the incident id (= the CloudEvent `subject`).
TOPIC_EVENTS: Final = "incidents.events"
TOPIC_STATE: Final = "incidents.state"
TOPIC_BREACHES: Final = "incidents.breaches"
TOPIC_REJECTED: Final = "incidents.rejected"
TOPICS: Final = (TOPIC_EVENTS, TOPIC_STATE, TOPIC_BREACHES, TOPIC_REJECTED)
# The notifier's dead letters (deliveries that failed for good); not one of the engine's topics.
TOPIC_NOTIFICATIONS_DEAD: Final = "incidents.notifications.dead"
NOTIFICATION_DEAD: Final = "incident.notification.dead"

# Input event types.
INCIDENT_REPORTED: Final = "incident.reported"
INCIDENT_ACKNOWLEDGED: Final = "incident.acknowledged"
INCIDENT_INVESTIGATING: Final = "incident.investigating"
INCIDENT_FAILED_OVER: Final = "incident.failed_over"
INCIDENT_RESTORED: Final = "incident.restored"
INCIDENT_UPDATED: Final = "incident.updated"
INPUT_TYPES: Final = (
    INCIDENT_REPORTED,
    INCIDENT_ACKNOWLEDGED,
    INCIDENT_INVESTIGATING,
    INCIDENT_FAILED_OVER,
    INCIDENT_RESTORED,
    INCIDENT_UPDATED,
)

# Output event types, and the topic each one goes to.
STATE_CHANGED: Final = "incident.state.changed"
SLA_WARNING: Final = "incident.sla.warning"
SLA_BREACHED: Final = "incident.sla.breached"
FAILOVER_REQUIRED: Final = "incident.failover.required"
SLA_RETRACTED: Final = "incident.sla.retracted"
INCIDENT_REJECTED: Final = "incident.rejected"
OUTPUT_TOPICS: Final = {
    STATE_CHANGED: TOPIC_STATE,
    SLA_WARNING: TOPIC_BREACHES,
    SLA_BREACHED: TOPIC_BREACHES,
    FAILOVER_REQUIRED: TOPIC_BREACHES,
    SLA_RETRACTED: TOPIC_BREACHES,
    INCIDENT_REJECTED: TOPIC_REJECTED,
}

# Rejection reasons.
REASON_INVALID_TRANSITION: Final = "invalid_transition"
REASON_DUPLICATE: Final = "duplicate"
REASON_UNKNOWN_INCIDENT: Final = "unknown_incident"
REASON_SCHEMA: Final = "schema"
REASON_DECODE: Final = "decode"
# A message the engine could not decide or store for a reason no rule explains (a value Postgres
# refuses, a failure inside the domain): dead-lettered so that it cannot stop its partition.
REASON_UNPROCESSABLE: Final = "unprocessable"
REJECTION_REASONS: Final = (
    REASON_INVALID_TRANSITION,
    REASON_DUPLICATE,
    REASON_UNKNOWN_INCIDENT,
    REASON_SCHEMA,
    REASON_DECODE,
    REASON_UNPROCESSABLE,
)

# SLA clocks, in the order their timers are emitted when due at the same moment.
CLOCK_ACK: Final = "ack"
CLOCK_RESTORE: Final = "restore"
CLOCK_RESOLUTION: Final = "resolution"
CLOCK_UPDATE: Final = "update"
CLOCKS: Final = (CLOCK_ACK, CLOCK_RESTORE, CLOCK_RESOLUTION, CLOCK_UPDATE)

# Lifecycle states (design §4); `restored` is terminal.
STATE_REPORTED: Final = "reported"
STATE_ACKNOWLEDGED: Final = "acknowledged"
STATE_INVESTIGATING: Final = "investigating"
STATE_FAILED_OVER: Final = "failed_over"
STATE_RESTORED: Final = "restored"
STATES: Final = (STATE_REPORTED, STATE_ACKNOWLEDGED, STATE_INVESTIGATING, STATE_FAILED_OVER, STATE_RESTORED)

SEVERITIES: Final = ("critical", "high", "low")
REGIONS: Final = ("au", "us", "uk")

CLOUDEVENTS_CONTENT_TYPE: Final = "application/cloudevents+json"
ENGINE_SOURCE: Final = "/incident-sla-engine"

"""Pydantic models of every input and output CloudEvent; the JSON Schemas in `schemas/` come from them."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    model_validator,
)

from incident_contracts.bounds import (
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_SOURCE_LENGTH,
    MAX_SUBJECT_LENGTH,
    MAX_TEXT_LENGTH,
    NAME_PATTERN,
    TEXT_PATTERN,
    TIME_PATTERN,
    check_name,
    check_text,
    check_year,
)

Severity = Literal["critical", "high", "low"]
Region = Literal["au", "us", "uk"]
ClockName = Literal["ack", "restore", "resolution", "update"]
StateName = Literal["reported", "acknowledged", "investigating", "failed_over", "restored"]
Reason = Literal["invalid_transition", "duplicate", "unknown_incident", "schema", "decode", "unprocessable"]
NonEmpty = Annotated[str, Field(min_length=1)]


_NO_CONTROL = (AfterValidator(check_name), Field(json_schema_extra={"pattern": NAME_PATTERN}))
# Bounded strings without control characters: the pattern is published in the schemas, the check
# (rather than the pattern) refuses, so that the rejection says which character and where.
EventId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH), *_NO_CONTROL]
Source = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SOURCE_LENGTH), *_NO_CONTROL]
Subject = Annotated[str, StringConstraints(min_length=1, max_length=MAX_SUBJECT_LENGTH), *_NO_CONTROL]
Name = Annotated[str, StringConstraints(max_length=MAX_NAME_LENGTH), *_NO_CONTROL]
PolicyName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME_LENGTH), *_NO_CONTROL]
Text = Annotated[
    str,
    StringConstraints(max_length=MAX_TEXT_LENGTH),
    AfterValidator(check_text),
    Field(json_schema_extra={"pattern": TEXT_PATTERN}),
]
EventTime = Annotated[
    AwareDatetime,
    AfterValidator(check_year),
    Field(json_schema_extra={"pattern": TIME_PATTERN}),
]
# CloudEvents extension attributes: lower-case ASCII names of up to 20 characters, scalar values.
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")
_EXTENSIONS_SCHEMA: dict[str, Any] = {
    "propertyNames": {"pattern": "^[a-z0-9]{1,20}$"},
    "additionalProperties": {
        "anyOf": [
            {"type": "string", "maxLength": MAX_TEXT_LENGTH, "pattern": NAME_PATTERN},
            {"type": "boolean"},
            {"type": "integer"},
            {"type": "null"},
        ]
    },
}


class _Data(BaseModel):
    """Event data: unknown fields are refused, so a typo is a `schema` rejection, not silently lost."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ReportedData(_Data):
    severity: Severity
    region: Region
    summary: Text
    policy: PolicyName | None = None
    customer: Name | None = None


class AcknowledgedData(_Data):
    by: Name | None = None


class InvestigatingData(_Data):
    note: Text | None = None


class FailedOverData(_Data):
    site: Name | None = None


class RestoredData(_Data):
    note: Text | None = None


class UpdatedData(_Data):
    note: Text


class CloudEvent(BaseModel):
    """CloudEvents 1.0 envelope (structured mode); extension attributes such as `traceparent` are kept."""

    model_config = ConfigDict(extra="allow", frozen=True, json_schema_extra=_EXTENSIONS_SCHEMA)

    specversion: Literal["1.0"]
    id: EventId = Field(description="Unique per source: (source, id) identifies the event.")
    source: Source
    type: str
    subject: Subject = Field(description="The incident id; also the Kafka key.")
    time: EventTime = Field(
        description="When it happened (RFC 3339 with an offset; year 2000..2099). The live topic also"
        " refuses times more than INCIDENTS_MAX_CLOCK_SKEW ahead of the engine clock or older than"
        " INCIDENTS_MAX_EVENT_AGE."
    )
    datacontenttype: Literal["application/json"] | None = None
    dataschema: Name | None = None

    @model_validator(mode="after")
    def _check_extensions(self) -> CloudEvent:
        """Extension attributes as CloudEvents defines them; strings bounded, without control characters."""
        for name, value in (self.model_extra or {}).items():
            if not _EXTENSION_NAME.fullmatch(name):
                raise ValueError(f"extension attribute {name[:40]!r}: names are 1..20 of a-z, 0-9")
            if isinstance(value, str):
                if len(value) > MAX_TEXT_LENGTH:
                    raise ValueError(f"extension attribute {name}: longer than {MAX_TEXT_LENGTH} characters")
                try:
                    check_name(value)
                except ValueError as exc:
                    raise ValueError(f"extension attribute {name}: {exc}") from None
            elif value is not None and not isinstance(value, bool | int):
                raise ValueError(f"extension attribute {name}: a string, boolean or integer is expected")
        return self


class IncidentReported(CloudEvent):
    type: Literal["incident.reported"]
    data: ReportedData


class IncidentAcknowledged(CloudEvent):
    type: Literal["incident.acknowledged"]
    data: AcknowledgedData | None = None


class IncidentInvestigating(CloudEvent):
    type: Literal["incident.investigating"]
    data: InvestigatingData | None = None


class IncidentFailedOver(CloudEvent):
    type: Literal["incident.failed_over"]
    data: FailedOverData | None = None


class IncidentRestored(CloudEvent):
    type: Literal["incident.restored"]
    data: RestoredData | None = None


class IncidentUpdated(CloudEvent):
    type: Literal["incident.updated"]
    data: UpdatedData


InputEvent = Annotated[
    IncidentReported
    | IncidentAcknowledged
    | IncidentInvestigating
    | IncidentFailedOver
    | IncidentRestored
    | IncidentUpdated,
    Field(discriminator="type"),
]
INPUT_ADAPTER: TypeAdapter[InputEvent] = TypeAdapter(InputEvent)
INPUT_MODELS: tuple[type[CloudEvent], ...] = (
    IncidentReported,
    IncidentAcknowledged,
    IncidentInvestigating,
    IncidentFailedOver,
    IncidentRestored,
    IncidentUpdated,
)


# Outputs: the engine builds them as plain `OutputEvent`s for speed; these models define their schemas.
class _Out(_Data):
    policy: str


class _Notified(_Out):
    """What a notification needs beyond the clock (added in contract v1, additive: absent from
    outputs made before; null when the incident's projection predates them)."""

    summary: str | None = Field(None, description="the incident's summary, from its report")
    source: str | None = Field(None, description="the reporting channel: the `source` of its report")


class StateChangedData(_Out):
    model_config = ConfigDict(populate_by_name=True)

    from_: StateName | None = Field(alias="from", description="null on creation")
    to: StateName
    cause: str = Field(description="id of the input event that caused it")
    severity: Severity
    region: Region


class SlaWarningData(_Notified):
    clock: ClockName
    threshold: float = Field(gt=0, lt=1)
    due_at: AwareDatetime = Field(description="when the threshold was (or is) reached")
    deadline: AwareDatetime | None = Field(
        None, description="when the clock breaches (its 100 % moment), beside the threshold's `due_at`"
    )
    severity: Severity
    region: Region


class SlaBreachedData(_Notified):
    clock: ClockName
    due_at: AwareDatetime
    severity: Severity
    region: Region


class FailoverRequiredData(_Notified):
    due_at: AwareDatetime
    severity: Severity | None = Field(None, description="the incident's severity (additive: absent before)")
    region: Region


class SlaRetractedData(_Out):
    retracts: str = Field(description="id of the breach or failover order this retracts")
    retracted_type: Literal["incident.sla.breached", "incident.failover.required"]
    clock: ClockName
    due_at: AwareDatetime = Field(description="the due moment of the retracted output")
    stopped_at: AwareDatetime = Field(
        description="when the clock stopped (the `time` of the proving event), at or before `due_at`"
    )
    cause: str = Field(description="id of the input event that proves the clock stopped in time")
    severity: Severity
    region: Region


class RejectedData(_Data):
    reason: Reason
    detail: str
    original: str = Field(
        description="the rejected message: its text, or base64 when it is not UTF-8; only its first"
        " 65536 bytes when it is longer (then `original_size` and `original_sha256` are set)"
    )
    original_encoding: Literal["utf-8", "base64"] = "utf-8"
    original_size: int | None = Field(
        None, ge=0, description="size in bytes of the whole original, when `original` quotes only its start"
    )
    original_sha256: str | None = Field(
        None, pattern="^[0-9a-f]{64}$", description="SHA-256 (hex) of the whole original, when cut"
    )


class _OutputEnvelope(CloudEvent):
    datacontenttype: Literal["application/json"] | None = "application/json"


class StateChanged(_OutputEnvelope):
    type: Literal["incident.state.changed"]
    data: StateChangedData


class SlaWarning(_OutputEnvelope):
    type: Literal["incident.sla.warning"]
    data: SlaWarningData


class SlaBreached(_OutputEnvelope):
    type: Literal["incident.sla.breached"]
    data: SlaBreachedData


class FailoverRequired(_OutputEnvelope):
    type: Literal["incident.failover.required"]
    data: FailoverRequiredData


class SlaRetracted(_OutputEnvelope):
    type: Literal["incident.sla.retracted"]
    data: SlaRetractedData


class IncidentRejected(_OutputEnvelope):
    type: Literal["incident.rejected"]
    subject: NonEmpty | None = Field(  # type: ignore[assignment]
        default=None, description="The incident id (the Kafka key) when known."
    )
    data: RejectedData


class NotificationDeadData(_Data):
    destination: str = Field(description="the destination's name in the notifier's routing")
    destination_type: Literal["webhook", "slack", "email", "pagerduty"]
    attempts: int = Field(ge=1, description="attempts made (1 for a permanent failure)")
    last_error: str = Field(description="what the last attempt got, e.g. `HTTP 410` or `SMTP 550 ...`")
    output: dict[str, Any] = Field(description="the output CloudEvent that could not be delivered, whole")


class NotificationDead(_OutputEnvelope):
    """A delivery of the notifier that failed for good (topic incidents.notifications.dead)."""

    type: Literal["incident.notification.dead"]
    data: NotificationDeadData


OUTPUT_MODELS: tuple[type[CloudEvent], ...] = (
    StateChanged,
    SlaWarning,
    SlaBreached,
    FailoverRequired,
    SlaRetracted,
    IncidentRejected,
)


def model_type(model: type[CloudEvent]) -> str:
    """The CloudEvent `type` a model stands for."""
    annotation = model.model_fields["type"].annotation
    return str(annotation.__args__[0])  # type: ignore[union-attr]

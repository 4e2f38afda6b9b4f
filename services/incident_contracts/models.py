"""Pydantic models of every input and output CloudEvent; the JSON Schemas in `schemas/` come from them."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

Severity = Literal["critical", "high", "low"]
Region = Literal["au", "us", "uk"]
ClockName = Literal["ack", "restore", "resolution", "update"]
StateName = Literal["reported", "acknowledged", "investigating", "failed_over", "restored"]
Reason = Literal["invalid_transition", "duplicate", "unknown_incident", "schema", "decode"]
NonEmpty = Annotated[str, Field(min_length=1)]


class _Data(BaseModel):
    """Event data: unknown fields are refused, so a typo is a `schema` rejection, not silently lost."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ReportedData(_Data):
    severity: Severity
    region: Region
    summary: str
    policy: NonEmpty | None = None
    customer: str | None = None


class AcknowledgedData(_Data):
    by: str | None = None


class InvestigatingData(_Data):
    note: str | None = None


class FailedOverData(_Data):
    site: str | None = None


class RestoredData(_Data):
    note: str | None = None


class UpdatedData(_Data):
    note: str


class CloudEvent(BaseModel):
    """CloudEvents 1.0 envelope (structured mode); extension attributes such as `traceparent` are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"]
    id: NonEmpty
    source: NonEmpty
    type: str
    subject: NonEmpty = Field(description="The incident id; also the Kafka key.")
    time: AwareDatetime = Field(description="When it happened (RFC 3339 with an offset).")
    datacontenttype: Literal["application/json"] | None = None
    dataschema: str | None = None


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


class StateChangedData(_Out):
    model_config = ConfigDict(populate_by_name=True)

    from_: StateName | None = Field(alias="from", description="null on creation")
    to: StateName
    cause: str = Field(description="id of the input event that caused it")
    severity: Severity
    region: Region


class SlaWarningData(_Out):
    clock: ClockName
    threshold: float = Field(gt=0, lt=1)
    due_at: AwareDatetime = Field(description="when the threshold was (or is) reached")
    severity: Severity
    region: Region


class SlaBreachedData(_Out):
    clock: ClockName
    due_at: AwareDatetime
    severity: Severity
    region: Region


class FailoverRequiredData(_Out):
    due_at: AwareDatetime
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


class IncidentRejected(_OutputEnvelope):
    type: Literal["incident.rejected"]
    subject: NonEmpty | None = Field(  # type: ignore[assignment]
        default=None, description="The incident id (the Kafka key) when known."
    )
    data: RejectedData


OUTPUT_MODELS: tuple[type[CloudEvent], ...] = (
    StateChanged,
    SlaWarning,
    SlaBreached,
    FailoverRequired,
    IncidentRejected,
)


def model_type(model: type[CloudEvent]) -> str:
    """The CloudEvent `type` a model stands for."""
    annotation = model.model_fields["type"].annotation
    return str(annotation.__args__[0])  # type: ignore[union-attr]

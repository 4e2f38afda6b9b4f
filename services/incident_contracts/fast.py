"""A fast decoder (msgspec) of the common shape of input CloudEvents, for bulk runs such as `simulate`.

`decode_fast` accepts a strict subset of what the pydantic models accept and yields the same values:
no extension attributes, times only in the plain RFC 3339 form `2025-06-11T10:00:00[.ffffff](Z|±hh:mm)`
of years 2000..2099, strings within the contract's lengths, and no JSON escape or control character.
Anything else returns None, and the caller falls back to `parse_event`, which decides and explains.
The events it makes carry what `SlaDomain.handle` reads (`id`, `type`, `source`, `subject`, `time`,
`data`, `datacontenttype`, `dataschema`), but they are not pydantic models: pass `raw` to `handle`.
About five times cheaper than the pydantic validation, which dominates a simulation's decoding.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

import msgspec
from msgspec import Meta, Struct

from incident_contracts.bounds import (
    MAX_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_SOURCE_LENGTH,
    MAX_SUBJECT_LENGTH,
    MAX_TEXT_LENGTH,
)

# The length bounds of `incident_contracts.bounds`, as the models have them: a string outside them
# makes this decoder give up, and pydantic refuses it with the explanation. Control characters are
# excluded on the bytes instead (see `decode_struct`): a `pattern` here is a Python regex call per
# string, which tripled the cost of decoding an event.
EventId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
Source = Annotated[str, Meta(min_length=1, max_length=MAX_SOURCE_LENGTH)]
Subject = Annotated[str, Meta(min_length=1, max_length=MAX_SUBJECT_LENGTH)]
Name = Annotated[str, Meta(max_length=MAX_NAME_LENGTH)]
PolicyName = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_LENGTH)]
Text = Annotated[str, Meta(max_length=MAX_TEXT_LENGTH)]
# The one time form taken here (ASCII digits, in-range fields, years 2000..2099 as the models take);
# every other form goes to pydantic. Checked by msgspec as it decodes (`search`, hence the anchors;
# `(?a)`: ASCII digits only).
_TIME_PATTERN = (
    r"(?a)^20\d{2}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])T(?:[01]\d|2[0-3]):[0-5]\d:[0-5]\d(?:\.\d{1,6})?"
    r"(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)\Z"
)
if TYPE_CHECKING:
    TimeText = Any  # a datetime once decode_fast returns the event: readers see what they always saw
else:
    TimeText = Annotated[str, Meta(pattern=_TIME_PATTERN)]


class _Data(Struct, frozen=True, forbid_unknown_fields=True, gc=False):
    """Event data: unknown fields are refused (as by the models), so they go to the pydantic path."""


class ReportedData(_Data, frozen=True):
    severity: Literal["critical", "high", "low"]
    region: Literal["au", "us", "uk"]
    summary: Text
    policy: PolicyName | None = None
    customer: Name | None = None


class AcknowledgedData(_Data, frozen=True):
    by: Name | None = None


class InvestigatingData(_Data, frozen=True):
    note: Text | None = None


class FailedOverData(_Data, frozen=True):
    site: Name | None = None


class RestoredData(_Data, frozen=True):
    note: Text | None = None


class UpdatedData(_Data, frozen=True):
    note: Text


class FastEvent(Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True, gc=False):
    """The envelope; `time` holds the text (of the one form taken) until `decode_fast` makes it a datetime."""

    specversion: Literal["1.0"]
    id: EventId
    source: Source
    subject: Subject
    time: TimeText
    datacontenttype: Literal["application/json"] | None = None
    dataschema: Name | None = None
    data: Any = None
    type: ClassVar[str]


def _event_struct(event_type: str, data: Any, required: bool) -> type[FastEvent]:
    """The envelope of one event type, tagged by `type`, with its data (optional unless `required`)."""
    field = ("data", data) if required else ("data", data | None, None)
    name = "Fast" + event_type.removeprefix("incident.").title().replace("_", "")
    struct = msgspec.defstruct(
        name, [field], bases=(FastEvent,), tag=event_type, namespace={"type": event_type}, module=__name__
    )
    return struct  # type: ignore[return-value]  # a FastEvent subclass: its base is FastEvent


EVENT_STRUCTS: tuple[type[FastEvent], ...] = (
    _event_struct("incident.reported", ReportedData, required=True),
    _event_struct("incident.acknowledged", AcknowledgedData, required=False),
    _event_struct("incident.investigating", InvestigatingData, required=False),
    _event_struct("incident.failed_over", FailedOverData, required=False),
    _event_struct("incident.restored", RestoredData, required=False),
    _event_struct("incident.updated", UpdatedData, required=True),
)
_DECODER = msgspec.json.Decoder(Union[EVENT_STRUCTS])  # noqa: UP007 (a Union of a tuple of types)
_parse_time = datetime.fromisoformat
_decode = _DECODER.decode


# Control characters, on the bytes: JSON refuses raw U+0000-U+001F (msgspec too), so one can only come
# from an escape (a backslash); DEL is ASCII 7F; the C1 controls are the UTF-8 bytes C2 80-9F. This is
# conservative (any escape, any C2 byte: the fast path gives up and pydantic decides), and uses
# `find`, not `in`, which tries the operand as an int first (twice slower).


def decode_struct(raw: bytes) -> FastEvent:
    """For a hot loop that inlines `decode_fast`: `event = decode_struct(raw)`, then
    `event.time = parse_time(event.time)`, any ValueError of either meaning "use `parse_event`"."""
    if raw.find(b"\\") >= 0 or raw.find(b"\x7f") >= 0 or (not raw.isascii() and raw.find(b"\xc2") >= 0):
        raise msgspec.DecodeError("an escape or a control character: left to pydantic")
    return _decode(raw)


parse_time: Callable[[str], datetime] = _parse_time


def decode_fast(raw: bytes) -> FastEvent | None:
    """The input CloudEvent of `raw` when it has the common shape, else None (use `parse_event`).

    (`msgspec.DecodeError` and `UnicodeDecodeError` are ValueErrors.)"""
    if raw.find(b"\\") >= 0 or raw.find(b"\x7f") >= 0 or (not raw.isascii() and raw.find(b"\xc2") >= 0):
        return None  # an escape or a control character (see above `decode_struct`): pydantic decides
    try:
        event: FastEvent = _decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    try:
        event.time = _parse_time(event.time)
    except ValueError:  # e.g. 2025-02-30
        return None
    return event

"""Parse and validate one input message (structured JSON, or binary mode with `ce_*` headers)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from pydantic import ValidationError

from incident_contracts.envelope import binary_envelope, header_map, is_binary_mode
from incident_contracts.errors import DecodeError, SchemaError
from incident_contracts.models import INPUT_ADAPTER, CloudEvent

Headers = Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None]


def parse_event(raw: bytes, headers: Headers | None = None) -> CloudEvent:
    """Decode and validate an input CloudEvent; raise DecodeError or SchemaError with a readable detail."""
    hmap = header_map(headers) if headers else None
    if hmap and is_binary_mode(hmap):
        try:
            data = orjson.loads(raw) if raw else None
            envelope = binary_envelope(hmap, data)
        except (orjson.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DecodeError(f"binary-mode message is not readable: {exc}") from None
        return validate_envelope(envelope)
    try:
        return INPUT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        envelope = _loads_object(raw)  # a decode error is raised from here
        raise _schema_error(exc, envelope) from None


def validate_envelope(envelope: Any) -> CloudEvent:
    """Validate an already decoded JSON value as an input CloudEvent."""
    if not isinstance(envelope, dict):
        raise DecodeError(f"expected a JSON object, got {type(envelope).__name__}")
    try:
        return INPUT_ADAPTER.validate_python(envelope)
    except ValidationError as exc:
        raise _schema_error(exc, envelope) from None


def _loads_object(raw: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise DecodeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _schema_error(exc: ValidationError, envelope: dict[str, Any]) -> SchemaError:
    event_id = envelope.get("id") if isinstance(envelope.get("id"), str) else None
    subject = envelope.get("subject") if isinstance(envelope.get("subject"), str) else None
    return SchemaError(describe(exc), event_id=event_id or None, subject=subject or None)


def describe(exc: ValidationError) -> str:
    """A one-line summary of a pydantic error: `field.path: message (got value)`; ... ."""
    parts = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if loc and isinstance(loc[0], str) and loc[0].startswith("incident."):
            loc = loc[1:]  # drop the discriminator tag pydantic puts first
        tag_error = error["type"].startswith("union_tag")
        where = ".".join(str(p) for p in loc) or ("type" if tag_error else "(message)")
        # A model-level error (loc empty) would quote the whole message: its text says enough.
        got = "" if error["type"] == "missing" or not loc else f" (got {_short(error['input'])})"
        parts.append(f"{where}: {error['msg']}{got}")
    return "; ".join(parts)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

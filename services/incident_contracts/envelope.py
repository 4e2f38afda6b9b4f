"""Output CloudEvents, deterministic ids, and the structured/binary-mode envelope helpers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

import orjson

from incident_contracts.constants import CLOUDEVENTS_CONTENT_TYPE, ENGINE_SOURCE, OUTPUT_TOPICS

# Key of the engine's output ids: uuid5(NAMESPACE_URL, "urn:incident-sla-engine"). Never change it:
# downstream deduplicates on these ids across replays and versions.
_NAMESPACE = bytes.fromhex("81ac74af14ef56a1b0896e6f1a79ab3c")
_JSON_OPTIONS = orjson.OPT_UTC_Z
JSON_LINE_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE  # to_json_line


_KEYED_HASH = hashlib.blake2b(digest_size=16, key=_NAMESPACE)
_new_digest = _KEYED_HASH.copy


def stable_id(name: str) -> str:
    """A deterministic id for `name`: keyed BLAKE2b-128 as 32 hex digits (valid input of a Postgres uuid).

    About 7x cheaper than `uuid.uuid5`, which matters: every output event needs one.
    """
    digest = _new_digest()
    digest.update(name.encode())
    return digest.hexdigest()


@dataclass(slots=True)
class OutputEvent:
    """An engine-made CloudEvent (structured JSON), with the topic it goes to."""

    id: str
    type: str
    subject: str | None  # the incident id; None only for a rejected message without a key
    time: datetime  # the emission moment, UTC
    data: dict[str, Any]

    specversion: ClassVar[str] = "1.0"
    source: ClassVar[str] = ENGINE_SOURCE
    datacontenttype: ClassVar[str] = "application/json"

    @property
    def topic(self) -> str:
        """Which of the output topics this event belongs on."""
        return OUTPUT_TOPICS[self.type]

    @property
    def key(self) -> bytes | None:
        """The Kafka key: the incident id."""
        return self.subject.encode() if self.subject is not None else None

    def to_json(self) -> dict[str, Any]:
        """The structured-mode CloudEvent as a dict (times stay datetimes; no null `subject`)."""
        if self.subject is None:
            return {
                "specversion": "1.0",
                "id": self.id,
                "source": ENGINE_SOURCE,
                "type": self.type,
                "time": self.time,
                "datacontenttype": "application/json",
                "data": self.data,
            }
        return {
            "specversion": "1.0",
            "id": self.id,
            "source": ENGINE_SOURCE,
            "type": self.type,
            "subject": self.subject,
            "time": self.time,
            "datacontenttype": "application/json",
            "data": self.data,
        }

    def to_json_bytes(self) -> bytes:
        """The structured-mode CloudEvent as JSON bytes (RFC 3339 times in UTC, `Z`)."""
        return orjson.dumps(self.to_json(), option=_JSON_OPTIONS)

    def to_json_line(self) -> bytes:
        """`to_json_bytes()` and a newline: one line of JSONL."""
        return orjson.dumps(self.to_json(), option=JSON_LINE_OPTIONS)


CONTENT_TYPE_HEADER = ("content-type", CLOUDEVENTS_CONTENT_TYPE.encode())


def header_map(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None) -> dict:
    """Kafka headers as a dict of lower-cased name to bytes (the last one wins)."""
    if headers is None:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {name.lower(): value for name, value in items}


def is_binary_mode(headers: Mapping[str, bytes | None]) -> bool:
    """True when the message carries its CloudEvent attributes in `ce_*` headers."""
    return "ce_specversion" in headers


def binary_envelope(headers: Mapping[str, bytes | None], data: Any) -> dict[str, Any]:
    """The structured envelope of a binary-mode message: `ce_*` headers become attributes, body the data."""
    envelope: dict[str, Any] = {}
    for name, value in headers.items():
        if name.startswith("ce_") and value is not None:
            envelope[name[3:]] = value.decode()
    content_type = headers.get("content-type")
    if content_type:
        envelope["datacontenttype"] = content_type.decode().split(";")[0].strip()
    envelope["data"] = data
    return envelope

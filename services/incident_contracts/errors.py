"""Errors of reading an input message; each carries its rejection reason and a human-readable detail."""

from __future__ import annotations

from typing import ClassVar


class InputError(ValueError):
    """An input message that cannot become a CloudEvent."""

    reason: ClassVar[str]

    def __init__(self, detail: str, *, event_id: str | None = None, subject: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.event_id = event_id  # the `id` attribute, when it could be read (for a deterministic output id)
        self.subject = subject


class DecodeError(InputError):
    """The bytes are not a JSON object (reason `decode`)."""

    reason = "decode"


class SchemaError(InputError):
    """A JSON object that is not a valid input CloudEvent (reason `schema`)."""

    reason = "schema"

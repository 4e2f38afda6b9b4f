"""How an email names the engine's incident it is about, so that a reply threads back to it.

The notifier's emails and the email intake share this and no table: the notifier puts the
incident id in a subject token and in its `Message-ID`; the intake reads either from a reply
(its subject, `In-Reply-To`/`References`). The token is distinct from the intake's own people
numbers (`[INC-1001]`): an engine id is never read as a people number, nor the reverse.

- Subject: `[INC:<incident id>]` when the id is made of letters, digits and `._:/@+-`, else
  `[INC=<base32 of the id's UTF-8, lower case, unpadded>]`.
- Message-ID: `<notify.<output id>.<destination>.<base32 of the id>@<domain>>`.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

from incident_contracts.bounds import MAX_SUBJECT_LENGTH
from incident_contracts.envelope import stable_id

__all__ = [
    "incident_of_message_id",
    "incident_of_subject",
    "incident_token",
    "notifier_message_id",
    "without_tokens",
]

_PLAIN_ID: Final = re.compile(r"[A-Za-z0-9._:/@+-]{1,256}")
_TOKEN: Final = re.compile(r"\[INC(?::([A-Za-z0-9._:/@+-]{1,256})|=([A-Za-z2-7]{1,512}))\]", re.IGNORECASE)
_MESSAGE_ID: Final = re.compile(r"<notify\.[^<>@\s]*\.([A-Za-z2-7]{1,512})@[^<>@\s]+>", re.IGNORECASE)
_SAFE_OUTPUT_ID: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _b32(incident_id: str) -> str:
    return base64.b32encode(incident_id.encode()).decode().rstrip("=").lower()


def _from_b32(text: str) -> str | None:
    try:
        raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
        incident_id = raw.decode()
    except (binascii.Error, ValueError):  # not base32, or not UTF-8
        return None
    ok = 0 < len(incident_id) <= MAX_SUBJECT_LENGTH and not _CONTROL.search(incident_id)
    return incident_id if ok else None


def incident_token(incident_id: str) -> str:
    """The subject token of an engine incident: `[INC:<id>]`, or `[INC=<base32>]` for other ids."""
    if _PLAIN_ID.fullmatch(incident_id):
        return f"[INC:{incident_id}]"
    return f"[INC={_b32(incident_id)}]"


def incident_of_subject(subject: str) -> str | None:
    """The engine incident id of the first token in `subject`, or None."""
    for found in _TOKEN.finditer(subject):
        plain, encoded = found.groups()
        incident_id = plain if plain is not None else _from_b32(encoded)
        if incident_id is not None:
            return incident_id
    return None


def without_tokens(subject: str) -> str:
    """`subject` with the engine incident tokens cut out (what is left may name a people number)."""
    return _TOKEN.sub(" ", subject)


def notifier_message_id(output_id: str, destination: str, incident_id: str, domain: str) -> str:
    """The notifier's `Message-ID` of one output's email to one destination: stable across retries,
    unique per (output, destination), and naming the incident for the reply's `In-Reply-To`."""
    output = output_id if _SAFE_OUTPUT_ID.fullmatch(output_id) else stable_id(output_id)
    return f"<notify.{output}.{destination}.{_b32(incident_id)}@{domain}>"


def incident_of_message_id(message_id: str) -> str | None:
    """The engine incident id a notifier `Message-ID` names, or None for any other Message-ID."""
    found = _MESSAGE_ID.fullmatch(message_id.strip())
    return _from_b32(found.group(1)) if found else None

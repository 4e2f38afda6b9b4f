"""Pure reading of a received mail: headers that matter, text body, command line, address tags."""

from __future__ import annotations

import email
import email.policy
import hashlib
import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import parseaddr
from html.parser import HTMLParser
from typing import Final

from incident_contracts.bounds import MAX_NAME_LENGTH, MAX_TEXT_LENGTH

__all__ = [
    "COMMANDS",
    "ParsedMail",
    "address_tags",
    "html_to_text",
    "is_automatic",
    "parse_mail",
    "reply_command",
    "reply_text",
]

# first line of a reply -> input event type
COMMANDS: Final = {
    "ack": "acknowledged",
    "acknowledge": "acknowledged",
    "acknowledged": "acknowledged",
    "investigating": "investigating",
    "failed over": "failed_over",
    "failedover": "failed_over",
    "restored": "restored",
}
_MESSAGE_ID: Final = re.compile(r"<[^<>\s]+>")
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_QUOTE_HEADER: Final = re.compile(r"^(On .+ wrote:|-+ ?Original Message ?-+|From: .+)$", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedMail:
    """What the intake reads of one message."""

    message_id: str
    sender: str
    subject: str
    text: str
    references: list[str] = field(default_factory=list)  # In-Reply-To first, then References, newest first
    automatic: str | None = None  # why it is an auto-reply or bounce, else None


class _TextOf(HTMLParser):
    """Text of an HTML document: block elements become line breaks, scripts and styles vanish."""

    _BLOCKS: Final = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head"):
            self._skip += 1
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head"):
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Readable text of an HTML body (stdlib parser: no GPL dependency, no network, no scripts)."""
    parser = _TextOf()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _clean(text: str, limit: int) -> str:
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text[:limit]


def _body_text(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        content = part.get_content()
    except (LookupError, ValueError):  # unknown charset or broken transfer encoding
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(content, str):
        return ""
    return html_to_text(content) if part.get_content_type() == "text/html" else content


def is_automatic(message: EmailMessage, envelope_sender: str) -> str | None:
    """Why this message is an auto-reply, a bounce or bulk mail (never answered), or None."""
    if not envelope_sender or envelope_sender == "<>":
        return "null sender (a bounce)"
    auto = str(message.get("Auto-Submitted", "no")).strip().lower()
    if auto and not auto.startswith("no"):
        return f"Auto-Submitted: {auto}"
    precedence = str(message.get("Precedence", "")).strip().lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"Precedence: {precedence}"
    if message.get("X-Autoreply") or message.get("X-Autorespond"):
        return "X-Autoreply"
    if message.get_content_type() == "multipart/report":
        return "delivery report (a bounce)"
    return None


def parse_mail(raw: bytes, envelope_sender: str) -> ParsedMail:
    """Read a message; a missing Message-ID is derived from its bytes (a re-delivery is the same)."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    found = _MESSAGE_ID.findall(str(message.get("Message-ID", "")))
    message_id = found[0] if found else f"<{hashlib.sha256(raw).hexdigest()[:32]}@intake.derived>"
    references = _MESSAGE_ID.findall(str(message.get("In-Reply-To", "")))
    references += reversed(_MESSAGE_ID.findall(str(message.get("References", ""))))
    _, from_address = parseaddr(str(message.get("From", "")))
    sender = (from_address or envelope_sender).strip().lower()
    subject = " ".join(str(message.get("Subject", "")).split())
    return ParsedMail(
        message_id=message_id[:MAX_NAME_LENGTH],
        sender=_clean(sender, MAX_NAME_LENGTH),
        subject=_clean(subject, MAX_TEXT_LENGTH),
        text=_clean(_body_text(message), MAX_TEXT_LENGTH * 4).strip(),
        references=list(dict.fromkeys(references)),
        automatic=is_automatic(message, envelope_sender),
    )


def reply_text(text: str) -> str:
    """The new text of a reply: what is above the quoted part (`> …`, `On … wrote:`)."""
    kept: list[str] = []
    for line in text.splitlines():
        if line.startswith(">") or _QUOTE_HEADER.match(line.strip()):
            break
        kept.append(line)
    return "\n".join(kept).strip()


def reply_command(text: str) -> str | None:
    """The input event type the reply's first line commands (`ack`, `restored`, …), or None."""
    new_text = reply_text(text)
    first = new_text.splitlines()[0] if new_text else ""
    words = " ".join(re.sub(r"[^a-z ]", " ", first.lower()).split())
    return COMMANDS.get(words)


def address_tags(address: str) -> tuple[str, list[str]]:
    """`support+critical+us@example.com` -> (`support@example.com`, [`critical`, `us`]), lower case."""
    local, _, domain = address.strip().strip("<>").lower().rpartition("@")
    base, *tags = local.split("+")
    return f"{base}@{domain}", [t for t in tags if t]

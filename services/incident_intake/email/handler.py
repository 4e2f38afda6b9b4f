"""The aiosmtpd handler: each accepted message becomes input events, answered after Kafka's ack."""

from __future__ import annotations

import logging
from typing import Any, Final

import asyncpg
from opentelemetry import trace

from incident_contracts import InputError
from incident_contracts.bounds import MAX_TEXT_LENGTH
from incident_intake.email.parse import ParsedMail, address_tags, parse_mail, reply_command, reply_text
from incident_intake.people_common import (
    KafkaUnavailable,
    Publisher,
    derived_id,
    format_number,
    input_event,
    parse_number,
)
from incident_intake.people_settings import EmailSettings
from incident_intake.people_store import NewIncident, PeopleStore

__all__ = ["SOURCE", "MailboxHandler", "sender_allowed"]

SOURCE: Final = "/channels/email"
_SEVERITIES: Final = ("critical", "high", "low")
_REGIONS: Final = ("au", "us", "uk")
_log = logging.getLogger(__name__)


def sender_allowed(sender: str, rules: dict[str, bool], *, change: bool = False) -> bool:
    """Whether `sender` may write to (or, with `change`, command incidents through) a mailbox.

    `rules` maps an address or '@domain' to `can_change`: rows without it are the mailbox's
    allowlist (when there is one, nobody else may write), rows with it are its responders (who may
    always write, and acknowledge/restore by reply)."""
    domain = "@" + sender.rpartition("@")[2]
    match = rules.get(sender, rules.get(domain))
    if change:
        return match is True
    restricted = any(not can_change for can_change in rules.values())
    return match is not None or not restricted


class MailboxHandler:
    """aiosmtpd handler of the support mailboxes (`handle_RCPT`, `handle_DATA`)."""

    def __init__(
        self,
        settings: EmailSettings,
        store: PeopleStore,
        publisher: Publisher,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.tracer = trace.get_tracer("incident_intake.email", tracer_provider=tracer_provider)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        """Accept only the configured support addresses and known `+tags`."""
        mailbox, tags = address_tags(address)
        if mailbox not in self.settings.intake_smtp_mailboxes:
            return f"550 5.1.1 <{address}>: no such support mailbox here"
        unknown = [t for t in tags if t not in _SEVERITIES + _REGIONS]
        if unknown:
            return f"550 5.1.1 <{address}>: unknown tag {unknown[0]!r} (a severity or a region)"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        """Turn the message into events; 250 only once Kafka acknowledged them, 451 to retry later."""
        with self.tracer.start_as_current_span("smtp message", kind=trace.SpanKind.SERVER) as span:
            span.set_attribute("smtp.mail_from", str(envelope.mail_from or ""))
            try:
                mail = parse_mail(envelope.original_content or envelope.content, envelope.mail_from or "")
                span.set_attribute("email.message_id", mail.message_id)
                answer = await self._deliver(mail, envelope.rcpt_tos)
            except KafkaUnavailable as exc:
                _log.warning("message deferred: %s", exc)
                return "451 4.3.0 the incident queue is unavailable; try again later"
            except (asyncpg.PostgresError, OSError, TimeoutError) as exc:
                _log.warning("message deferred: database unavailable: %s", exc)
                return "451 4.3.0 the intake's database is unavailable; try again later"
            except InputError as exc:
                _log.warning("message refused: %s", exc)
                return f"554 5.6.0 the message cannot become an incident event: {str(exc)[:200]}"
            except Exception:  # a bug of ours: keep the mail at the sender (retried), never lose it
                _log.exception("message deferred: unexpected error")
                return "451 4.3.0 internal error of the intake; try again later"
            span.set_attribute("smtp.answer", answer)
            return answer

    async def _deliver(self, mail: ParsedMail, rcpt_tos: list[str]) -> str:
        if mail.automatic:
            _log.info("dropped %s from %s: %s", mail.message_id, mail.sender, mail.automatic)
            return f"250 2.0.0 dropped, not an incident: {mail.automatic}"
        if await self.store.seen_message(mail.message_id):
            return "250 2.0.0 already accepted"
        mailbox, tags = address_tags(rcpt_tos[0])
        rules = await self.store.sender_rules(mailbox)
        if not sender_allowed(mail.sender, rules):
            return f"550 5.7.1 <{mail.sender}> may not write to {mailbox}"
        incident = await self._reply_target(mail)
        if incident is None:
            return await self._open(mail, mailbox, tags)
        command = reply_command(mail.text)
        if command is not None and not sender_allowed(mail.sender, rules, change=True):
            return f"550 5.7.1 <{mail.sender}> may not change incidents through {mailbox}"
        event = self._reply_event(mail, incident, command)
        trace.get_current_span().set_attribute("incident.id", incident)
        await self.publisher.publish([event])
        await self.store.remember_message(mail.message_id, incident)
        number = await self.store.number_of(incident)
        shown = format_number(number) if number is not None else incident
        return f"250 2.0.0 {event['type']} for {shown}"

    async def _reply_target(self, mail: ParsedMail) -> str | None:
        number = parse_number(mail.subject)
        if number is not None and (incident := await self.store.incident_of_number(number)):
            return incident
        return await self.store.incident_of_messages(mail.references)

    def _reply_event(self, mail: ParsedMail, incident: str, command: str | None) -> dict[str, Any]:
        lines = reply_text(mail.text).splitlines()
        rest = "\n".join(lines[1:]).strip()[:MAX_TEXT_LENGTH] or None
        data: dict[str, Any]
        if command == "acknowledged":
            data = {"by": mail.sender}
        elif command in ("investigating", "restored"):
            data = {"note": rest}
        elif command == "failed_over":
            data = {}
        else:
            command = "updated"
            note = reply_text(mail.text) or mail.text or mail.subject or "(empty reply)"
            data = {"note": f"{mail.sender}: {note}"[:MAX_TEXT_LENGTH]}
        return input_event(
            command, incident, source=SOURCE, event_id=derived_id("email", mail.message_id),
            data=data, extensions={"reporter": mail.sender},
        )  # fmt: skip

    async def _open(self, mail: ParsedMail, mailbox: str, tags: list[str]) -> str:
        config = self.settings.intake_smtp_mailboxes[mailbox]
        severity = next((t for t in tags if t in _SEVERITIES), None) or config.severity
        region = next((t for t in tags if t in _REGIONS), None) or config.region
        incident = NewIncident(
            incident_id=derived_id("email", mail.message_id, length=20),
            source=SOURCE,
            reporter=mail.sender,
            severity=severity or self.settings.intake_smtp_default_severity,
            region=region or self.settings.intake_smtp_default_region,
            summary=(mail.subject or "(no subject)")[:MAX_TEXT_LENGTH],
            details=mail.text[:MAX_TEXT_LENGTH],
        )
        trace.get_current_span().set_attribute("incident.id", incident.incident_id)
        reported = input_event(
            "reported", incident.incident_id, source=SOURCE,
            event_id=derived_id("email", mail.message_id),
            data={"severity": incident.severity, "region": incident.region, "summary": incident.summary},
            extensions={"reporter": mail.sender},
        )  # fmt: skip
        events = [reported]
        if incident.details:  # the body is the report's details: kept in the incident's timeline
            details = input_event(
                "updated", incident.incident_id, source=SOURCE,
                event_id=derived_id("email", mail.message_id, "details"),
                data={"note": incident.details}, extensions={"reporter": mail.sender},
            )  # fmt: skip
            events.append(details)
        number = await self.store.number_for(incident)
        await self.publisher.publish(events)
        await self.store.remember_message(mail.message_id, incident.incident_id)
        return f"250 2.0.0 {format_number(number)} opened ({incident.severity}, {incident.region})"

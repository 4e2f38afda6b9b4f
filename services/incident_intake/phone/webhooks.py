"""`POST /v1/voice/{line}` and `POST /v1/sms/{line}`: signed by the provider, answered in TwiML.

Every request's `X-Twilio-Signature` is checked with Twilio's own validator over the line's public
URL (what the provider signed) before anything else: a bad or missing one is a 403 and nothing is
published. A step that publishes answers only after Kafka acknowledged, and keeps its answer under
(CallSid/MessageSid, step): the provider's retry gets the same answer and publishes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

import asyncpg
import httpx
from opentelemetry import trace
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from incident_intake.people_common import (
    KafkaUnavailable,
    Publisher,
    clean_text,
    derived_id,
    format_number,
    input_event,
)
from incident_intake.people_settings import PhoneLine, PhoneSettings
from incident_intake.people_store import NewIncident, PeopleStore
from incident_intake.phone import twiml
from incident_intake.phone.sms import parse_sms
from incident_intake.phone.status import EngineReader, describe_status

__all__ = ["PhoneIntake", "create_phone_app", "phone_routes"]

_log = logging.getLogger(__name__)
_XML: Final = "application/xml"
_MAX_BODY: Final = 64 * 1024
_SMS_HELP: Final = (
    "Send NEW <what is wrong> (or NEW CRITICAL|HIGH|LOW <text>), ACK <incident>, RESTORED <incident>"
    " or STATUS <incident>, e.g. ACK INC-1042."
)


def _spoken(number: int) -> str:
    return " ".join(str(number))  # digit by digit: "1 0 4 2"


class PhoneIntake:
    """The webhooks' logic, on the store, the publisher and the engine's read API."""

    def __init__(
        self,
        settings: PhoneSettings,
        store: PeopleStore,
        publisher: Publisher,
        engine: EngineReader,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self.tracer = trace.get_tracer("incident_intake.phone", tracer_provider=tracer_provider)
        self.settings = settings
        self.store = store
        self.publisher = publisher
        self.engine = engine
        token = settings.intake_phone_twilio_auth_token
        self.validator = RequestValidator(token.get_secret_value()) if token else None

    def signed(self, line: PhoneLine, request: Request, params: dict[str, str]) -> bool:
        """Whether the request carries the provider's valid signature over the line's public URL."""
        signature = request.headers.get("X-Twilio-Signature", "")
        if self.validator is None or not signature:
            return False
        url = line.public_url.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
        return bool(self.validator.validate(url, params, signature))

    async def once(self, sid: str, step: str, make: Callable[[], Awaitable[str]]) -> str:
        """The answer of a publishing step: the kept one on a retry, else made (and kept)."""
        if not sid:
            raise ValueError("the provider sent no CallSid/MessageSid")
        if (kept := await self.store.answered(sid, step)) is not None:
            return kept
        answer = await make()
        await self.store.remember_answer(sid, step, answer)
        return answer

    async def report(self, line_name: str, line: PhoneLine, sid: str, caller: str, severity: str,
                     summary: str) -> int:  # fmt: skip
        """Open an incident from a call or an SMS; returns its number once Kafka acknowledged."""
        source = f"/channels/phone/{line_name}"
        incident = NewIncident(
            incident_id=derived_id(f"phone-{line_name}", sid, length=20), source=source, reporter=caller,
            severity=severity, region=line.region, summary=clean_text(summary) or "(no text)",
        )  # fmt: skip
        trace.get_current_span().set_attribute("incident.id", incident.incident_id)
        number = await self.store.number_for(incident)
        event = input_event(
            "reported", incident.incident_id, source=source, event_id=derived_id("phone", sid, "reported"),
            data={"severity": severity, "region": line.region, "summary": incident.summary},
            extensions={"reporter": caller},
        )  # fmt: skip
        await self.publisher.publish([event])
        return number

    async def change(self, line_name: str, sid: str, caller: str, number: int, event_type: str) -> str | None:
        """Acknowledge/restore incident `number`; the incident id, or None when the number is unknown."""
        incident = await self.store.incident_of_number(number)
        if incident is None:
            return None
        trace.get_current_span().set_attribute("incident.id", incident)
        data = {"by": caller} if event_type == "acknowledged" else {"note": f"restored by {caller} by phone"}
        event = input_event(
            event_type, incident, source=f"/channels/phone/{line_name}",
            event_id=derived_id("phone", sid, event_type), data=data, extensions={"reporter": caller},
        )  # fmt: skip
        await self.publisher.publish([event])
        return incident

    # ---- voice

    async def voice(self, line_name: str, line: PhoneLine, path: str, step: str, form: dict[str, str],
                    query: dict[str, str]) -> str:  # fmt: skip
        """The TwiML of one voice menu step."""
        digits = form.get("Digits", "").strip()
        caller, sid = form.get("From", ""), form.get("CallSid", "")
        if step in ("", "start"):
            return twiml.main_menu(path)
        if step == "menu":
            if digits == "1":
                return twiml.ask_severity(path)
            if digits in ("2", "3"):
                if not await self.store.is_responder(line_name, caller):
                    return twiml.goodbye("Your number is not on this line's responder list. Goodbye.")
                if digits == "2":
                    return twiml.ask_number(path, "ack", "acknowledge")
                return twiml.ask_number(path, "restore", "report restored")
            return twiml.main_menu(path)
        if step == "severity":
            severity = twiml.SEVERITY_KEYS.get(digits)
            return twiml.ask_summary(path, severity) if severity else twiml.ask_severity(path)
        if step == "summary":
            severity = query.get("severity", "")
            if severity not in twiml.SEVERITY_KEYS.values():
                return twiml.main_menu(path)
            speech = " ".join(form.get("SpeechResult", "").split())
            summary = speech or f"Phone report on the {line_name.upper()} line from {caller or 'unknown'}"

            async def reported() -> str:
                number = await self.report(line_name, line, sid, caller, severity, summary)
                local = datetime.now(UTC).astimezone(ZoneInfo(line.timezone))
                return twiml.goodbye(
                    f"Incident number {_spoken(number)} is reported at {local:%H:%M}, severity {severity}. "
                    f"Again, your incident number is {_spoken(number)}. Goodbye."
                )

            return await self.once(sid, f"voice:summary:{severity}", reported)
        if step in ("ack", "restore"):
            if not await self.store.is_responder(line_name, caller):
                return twiml.goodbye("Your number is not on this line's responder list. Goodbye.")
            event_type = "acknowledged" if step == "ack" else "restored"

            async def changed() -> str:
                number = int(digits) if digits.isdigit() else -1
                if number < 0 or await self.change(line_name, sid, caller, number, event_type) is None:
                    return twiml.goodbye(f"There is no incident number {_spoken(max(number, 0))}. Goodbye.")
                return twiml.goodbye(f"Incident number {_spoken(number)} is {event_type}. Goodbye.")

            return await self.once(sid, f"voice:{step}:{digits}", changed)
        return twiml.main_menu(path)

    # ---- sms

    async def sms(self, line_name: str, line: PhoneLine, form: dict[str, str]) -> str:
        """The TwiML reply to one SMS."""
        command = parse_sms(form.get("Body", ""))
        caller, sid = form.get("From", ""), form.get("MessageSid", "")
        if command.verb == "NEW":
            severity = command.severity or self.settings.intake_phone_sms_severity

            async def reported() -> str:
                number = await self.report(line_name, line, sid, caller, severity, command.text)
                return _sms(
                    f"{format_number(number)} opened ({severity}, {line.region}). "
                    f"Reply STATUS {format_number(number)} for its clocks."
                )

            return await self.once(sid, "sms", reported)
        if command.verb in ("ACK", "RESTORED"):
            assert command.number is not None
            if not await self.store.is_responder(line_name, caller):
                return _sms("Your number is not on this line's responder list.")
            event_type = "acknowledged" if command.verb == "ACK" else "restored"
            number = command.number

            async def changed() -> str:
                if await self.change(line_name, sid, caller, number, event_type) is None:
                    return _sms(f"No incident {format_number(number)}.")
                return _sms(f"{format_number(number)} {event_type}.")

            return await self.once(sid, "sms", changed)
        if command.verb == "STATUS":
            assert command.number is not None
            return _sms(await self.status(command.number, line))
        return _sms(_SMS_HELP)

    async def status(self, number: int, line: PhoneLine) -> str:
        """The STATUS answer: state and clocks from the engine's read API."""
        shown = format_number(number)
        incident = await self.store.incident_of_number(number)
        if incident is None:
            return f"No incident {shown}."
        try:
            body = await self.engine.incident(incident)
        except httpx.HTTPError as exc:
            _log.warning("engine read API unavailable for STATUS: %s", exc)
            return f"The status of {shown} is unavailable right now; try again in a minute."
        if body is None:
            return f"{shown} is recorded; the engine has not processed it yet. Try again shortly."
        return describe_status(shown, body, line.timezone)


def _sms(text: str) -> str:
    response = MessagingResponse()
    response.message(text)
    return str(response)


def create_phone_app(intake: PhoneIntake) -> Starlette:
    """The Starlette app of the phone webhooks alone (tests, tools)."""
    return Starlette(routes=phone_routes(lambda: intake))


def phone_routes(current: Callable[[], PhoneIntake | None]) -> list[Route]:
    """`POST /v1/voice/{line}` and `/v1/sms/{line}` on the intake `current()` returns (503 while none)."""

    async def handle(
        request: Request, answer: Callable[[PhoneIntake, str, PhoneLine, dict[str, str]], Awaitable[str]]
    ) -> Response:
        intake = current()
        if intake is None:
            return PlainTextResponse("the phone intake is not running; retry", status_code=503)
        line_name = request.path_params["line"]
        line = intake.settings.intake_phone_lines.get(line_name)
        if line is None:
            return PlainTextResponse(f"no phone line {line_name!r}", status_code=404)
        body = await request.body()
        if len(body) > _MAX_BODY:
            return PlainTextResponse("request body too large", status_code=413)
        # the provider posts application/x-www-form-urlencoded (no multipart parser needed)
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        if not intake.signed(line, request, form):
            _log.warning("refused a webhook on line %s: bad or missing X-Twilio-Signature", line_name)
            return PlainTextResponse("invalid signature", status_code=403)
        kind = request.url.path.split("/")[2]
        attributes = {
            "phone.line": line_name,
            "phone.kind": kind,
            "phone.step": request.query_params.get("step", ""),
        }
        with intake.tracer.start_as_current_span(
            f"phone {kind} webhook", kind=trace.SpanKind.SERVER, attributes=attributes
        ):
            try:
                return Response(await answer(intake, line_name, line, form), media_type=_XML)
            except KafkaUnavailable as exc:
                _log.warning("webhook deferred: %s", exc)
                return PlainTextResponse("the incident queue is unavailable; retry", status_code=503)
            except (asyncpg.PostgresError, OSError) as exc:
                _log.warning("webhook deferred: database unavailable: %s", exc)
                return PlainTextResponse("the intake's database is unavailable; retry", status_code=503)
            except ValueError as exc:
                return PlainTextResponse(str(exc), status_code=400)

    async def voice(request: Request) -> Response:
        async def answer(intake: PhoneIntake, line_name: str, line: PhoneLine, form: dict[str, str]) -> str:
            query: dict[str, Any] = dict(request.query_params)
            step = query.get("step", "")
            return await intake.voice(line_name, line, request.url.path, step, form, query)

        return await handle(request, answer)

    async def sms(request: Request) -> Response:
        async def answer(intake: PhoneIntake, line_name: str, line: PhoneLine, form: dict[str, str]) -> str:
            return await intake.sms(line_name, line, form)

        return await handle(request, answer)

    return [
        Route("/v1/voice/{line}", voice, methods=["POST"]),
        Route("/v1/sms/{line}", sms, methods=["POST"]),
    ]

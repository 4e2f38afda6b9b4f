"""The phone lines end to end: signed Twilio webhooks -> the intake -> Kafka -> the real engine."""

from __future__ import annotations

import asyncio
import re
import smtplib
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
from twilio.request_validator import RequestValidator

from devstack.stack import Service
from incident_intake.http import create_app
from incident_intake.integrations import load_integrations
from incident_intake.people_app import with_people
from incident_intake.people_common import Publisher, derived_id
from incident_intake.people_settings import Mailbox
from incident_intake.service import IntakeService
from incident_intake.settings import IntakeSettings
from tests.integration.intake_helpers import PeopleStack, engine_state, free_port, people_stack

pytestmark = pytest.mark.integration

AUTH_TOKEN = "twilio-auth-token-for-tests"
PUBLIC = "https://intake.example.test"
LINES = {
    "au": {"number": "+61255550100", "region": "au", "timezone": "Australia/Sydney", "public_url": PUBLIC},
    "uk": {"number": "+442055550100", "region": "uk", "timezone": "Europe/London", "public_url": PUBLIC},
}
RESPONDER = "+61400000099"
CALLER = "+61400000001"


@pytest.fixture(scope="module")
async def stack(kafka: Service, postgres: Service) -> AsyncIterator[PeopleStack]:
    """Engine + intake with the AU and UK lines; RESPONDER on both lines' responder lists."""
    async with people_stack(
        kafka.url, postgres.url, intake_phone_lines=LINES, intake_phone_twilio_auth_token=AUTH_TOKEN
    ) as running:
        await running.channels.store.pool.executemany(
            "INSERT INTO intake_phone_responders (line, phone, name) VALUES ($1, $2, $3)",
            [("au", RESPONDER, "Sam"), ("uk", RESPONDER, "Sam")],
        )
        yield running


class Provider:
    """Plays Twilio: posts signed form webhooks (HMAC-SHA1 over public URL + sorted params)."""

    def __init__(self, stack: PeopleStack, token: str = AUTH_TOKEN) -> None:
        transport = httpx.ASGITransport(app=stack.channels.phone_app)
        self.client = httpx.AsyncClient(transport=transport, base_url=PUBLIC)
        self.signer = RequestValidator(token)

    async def post(self, path: str, form: dict[str, str], *, sign: bool = True) -> httpx.Response:
        """POST `form` to `path` (relative to the public URL), signed as the provider signs it."""
        url = urljoin(PUBLIC + "/", path.lstrip("/"))
        headers = {"X-Twilio-Signature": self.signer.compute_signature(url, form)} if sign else {}
        return await self.client.post(url, data=form, headers=headers)


def twiml(response: httpx.Response) -> ET.Element:
    """The TwiML document of a 200 answer."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return ET.fromstring(response.text)


def spoken(doc: ET.Element) -> str:
    """Everything the TwiML says."""
    return " ".join(say.text or "" for say in doc.iter("Say"))


def gather_action(doc: ET.Element) -> str:
    """Where the menu posts the caller's keys or speech next."""
    gather = doc.find("Gather")
    assert gather is not None, ET.tostring(doc)
    return gather.attrib["action"]


def call(line: str, caller: str) -> dict[str, str]:
    """The fields Twilio posts with every voice webhook of one call."""
    return {"CallSid": "CA" + uuid.uuid4().hex, "From": caller, "To": LINES[line]["number"],
            "AccountSid": "AC" + "0" * 32, "CallStatus": "in-progress"}  # fmt: skip


def spoken_number(text: str) -> int:
    """The incident number read back digit by digit ("number 1 0 0 1 is ...")."""
    found = re.search(r"number ((?:\d )+)", text + " ")
    assert found, text
    return int(found.group(1).replace(" ", ""))


async def test_voice_menu_report_by_speech_then_responders_ack_and_restore(stack: PeopleStack) -> None:
    provider, tail = Provider(stack), stack.tail
    fields = call("au", CALLER)
    menu = twiml(await provider.post("/v1/voice/au", fields))
    assert "To report a new incident, press 1" in spoken(menu)
    severity = twiml(await provider.post(gather_action(menu), {**fields, "Digits": "1"}))
    assert "critical incident, press 1" in spoken(severity)
    speak = twiml(await provider.post(gather_action(severity), {**fields, "Digits": "1"}))
    assert speak.find("Gather").attrib["input"] == "speech"  # type: ignore[union-attr]
    summary_step = gather_action(speak)
    said = {**fields, "SpeechResult": "Payments fail in Sydney", "Confidence": "0.93"}
    done = twiml(await provider.post(summary_step, said))
    number = spoken_number(spoken(done))
    assert done.find("Hangup") is not None and "reported" in spoken(done)
    incident = derived_id("phone-au", fields["CallSid"], length=20)
    await tail.wait_for(lambda: len(tail.of(incident)) == 1, what="the reported event")
    (reported,) = tail.of(incident)
    assert reported["source"] == "/channels/phone/au" and reported["reporter"] == CALLER
    assert reported["data"] == {"severity": "critical", "region": "au", "summary": "Payments fail in Sydney"}
    trace_id = reported["_headers"]["traceparent"].split("-")[1]
    assert any(
        s.name == "phone voice webhook" and format(s.context.trace_id, "032x") == trace_id
        for s in stack.spans.get_finished_spans()
    )
    await engine_state(stack.engine, incident, "reported")

    # Twilio retries the same step (it did not get our answer in time): same answer, published once
    again = await provider.post(summary_step, said)
    assert spoken(twiml(again)) == spoken(done)
    await asyncio.sleep(0.5)
    assert len(tail.of(incident)) == 1

    # a stranger may not acknowledge; the responder acknowledges by the number, then restores
    stranger = call("au", "+61400000777")
    menu = twiml(await provider.post("/v1/voice/au", stranger))
    refused = twiml(await provider.post(gather_action(menu), {**stranger, "Digits": "2"}))
    assert "not on this line's responder list" in spoken(refused)
    for key, state in (("2", "acknowledged"), ("3", "restored")):
        responder = call("au", RESPONDER)
        menu = twiml(await provider.post("/v1/voice/au", responder))
        ask = twiml(await provider.post(gather_action(menu), {**responder, "Digits": key}))
        assert "then press hash" in spoken(ask)
        answer = twiml(await provider.post(gather_action(ask), {**responder, "Digits": str(number)}))
        assert f"number {' '.join(str(number))} is {state}" in spoken(answer)
        await engine_state(stack.engine, incident, state)
    assert [e["type"] for e in tail.of(incident)] == [
        "incident.reported", "incident.acknowledged", "incident.restored",
    ]  # fmt: skip
    assert tail.of(incident, "incident.acknowledged")[0]["data"] == {"by": RESPONDER}


async def test_voice_report_without_speech_gets_a_fixed_summary(stack: PeopleStack) -> None:
    provider = Provider(stack)
    fields = call("uk", CALLER)
    menu = twiml(await provider.post("/v1/voice/uk", fields))
    severity = twiml(await provider.post(gather_action(menu), {**fields, "Digits": "1"}))
    speak = twiml(await provider.post(gather_action(severity), {**fields, "Digits": "3"}))
    redirect = speak.find("Redirect")  # the caller said nothing: Twilio follows the Redirect
    assert redirect is not None and redirect.text
    done = twiml(await provider.post(redirect.text, fields))
    assert "severity low" in spoken(done)
    incident = derived_id("phone-uk", fields["CallSid"], length=20)
    body = await engine_state(stack.engine, incident, "reported")
    assert body["severity"] == "low" and body["region"] == "uk"
    (reported,) = stack.tail.of(incident)
    assert reported["data"]["summary"] == f"Phone report on the UK line from {CALLER}"


def sms(line: str, sender: str, body: str) -> dict[str, str]:
    """The fields Twilio posts for one inbound SMS."""
    return {"MessageSid": "SM" + uuid.uuid4().hex, "From": sender, "To": LINES[line]["number"], "Body": body,
            "AccountSid": "AC" + "0" * 32, "NumMedia": "0"}  # fmt: skip


def message(response: httpx.Response) -> str:
    """The text of the SMS reply."""
    doc = twiml(response)
    return " ".join(m.text or "" for m in doc.iter("Message"))


async def test_sms_new_status_ack_restored_and_a_retried_webhook(stack: PeopleStack) -> None:
    provider, tail = Provider(stack), stack.tail
    new = sms("uk", CALLER, "NEW critical Trading platform unreachable")
    reply = message(await provider.post("/v1/sms/uk", new))
    assert "opened (critical, uk)" in reply
    number = re.search(r"INC-(\d+)", reply).group(0)  # type: ignore[union-attr]
    incident = derived_id("phone-uk", new["MessageSid"], length=20)
    await engine_state(stack.engine, incident, "reported")
    (reported,) = tail.of(incident)
    assert reported["data"]["summary"] == "Trading platform unreachable"
    assert reported["source"] == "/channels/phone/uk"

    status = message(await provider.post("/v1/sms/uk", sms("uk", CALLER, f"status {number}")))
    assert (
        status.startswith(f"{number} reported (critical, uk).")
        and "ack: 1" in status
        and "min left" in status
    )
    assert re.search(r"due \d\d:\d\d (GMT|BST)", status), status  # in the line's time zone

    assert "responder list" in message(await provider.post("/v1/sms/uk", sms("uk", CALLER, f"ACK {number}")))
    ack = sms("uk", RESPONDER, f"ACK {number}")
    assert message(await provider.post("/v1/sms/uk", ack)) == f"{number} acknowledged."
    assert message(await provider.post("/v1/sms/uk", ack)) == f"{number} acknowledged."  # a retry
    await engine_state(stack.engine, incident, "acknowledged")
    status = message(await provider.post("/v1/sms/uk", sms("uk", CALLER, f"STATUS {number}")))
    assert status.startswith(f"{number} acknowledged") and "ack: met" in status and "restore: " in status

    digits = number.removeprefix("INC-")
    restored = message(await provider.post("/v1/sms/uk", sms("uk", RESPONDER, f"restored {digits}")))
    assert restored == f"{number} restored."
    await engine_state(stack.engine, incident, "restored")
    await asyncio.sleep(0.5)
    assert [e["type"] for e in tail.of(incident)] == [
        "incident.reported", "incident.acknowledged", "incident.restored",
    ]  # fmt: skip
    assert "Send NEW" in message(await provider.post("/v1/sms/uk", sms("uk", CALLER, "hello?")))
    assert "No incident INC-99999" in message(
        await provider.post("/v1/sms/uk", sms("uk", CALLER, "STATUS 99999"))
    )


async def test_forged_or_missing_signatures_are_refused_and_publish_nothing(stack: PeopleStack) -> None:
    forger = Provider(stack, token="not-the-auth-token")
    new = sms("au", CALLER, "NEW forged incident")
    assert (await forger.post("/v1/sms/au", new)).status_code == 403
    provider = Provider(stack)
    assert (await provider.post("/v1/sms/au", new, sign=False)).status_code == 403
    # a genuine signature, but the body changed on the way: refused too
    url = PUBLIC + "/v1/sms/au"
    signature = provider.signer.compute_signature(url, new)
    tampered = {**new, "Body": "NEW critical something else"}
    answer = await provider.client.post(url, data=tampered, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 403
    # signed for another line's URL
    signature = provider.signer.compute_signature(PUBLIC + "/v1/sms/uk", new)
    answer = await provider.client.post(url, data=new, headers={"X-Twilio-Signature": signature})
    assert answer.status_code == 403
    voice = call("au", RESPONDER)
    assert (await forger.post("/v1/voice/au?step=ack", {**voice, "Digits": "1001"})).status_code == 403
    assert (await provider.post("/v1/sms/mars", new)).status_code == 404
    await asyncio.sleep(1.0)
    assert tail_subjects(stack, new["MessageSid"]) == []
    rows = await stack.channels.store.pool.fetchval(
        "SELECT count(*) FROM intake_phone_steps WHERE sid = ANY($1::text[])",
        [new["MessageSid"], voice["CallSid"]],
    )
    assert rows == 0
    # the same message, properly signed, goes through: the refusals were the signatures' doing
    assert "opened" in message(await provider.post("/v1/sms/au", new))
    await engine_state(stack.engine, derived_id("phone-au", new["MessageSid"], length=20), "reported")


def tail_subjects(stack: PeopleStack, sid: str) -> list[str]:
    """Subjects published for the incident a message would open."""
    incident = derived_id("phone-au", sid, length=20)
    return [e["subject"] for e in stack.tail.of(incident)]


async def test_kafka_down_is_a_503_and_the_providers_retry_publishes(stack: PeopleStack) -> None:
    provider, phone = Provider(stack), stack.channels.phone
    live = phone.publisher
    dead = stack.settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    phone.publisher = Publisher(dead, timeout=2.0)
    new = sms("au", CALLER, "NEW low Printer\x07 on fire")
    try:
        assert (await provider.post("/v1/sms/au", new)).status_code == 503
    finally:
        await phone.publisher.close()
        phone.publisher = live
    incident = derived_id("phone-au", new["MessageSid"], length=20)
    assert stack.tail.of(incident) == []
    assert "opened (low, au)" in message(await provider.post("/v1/sms/au", new))  # the retry
    await engine_state(stack.engine, incident, "reported")
    (reported,) = stack.tail.of(incident)
    assert reported["data"]["summary"] == "Printer on fire"  # the control character dropped


async def test_incidents_intake_serves_the_phone_lines_and_the_mailbox_beside_the_monitors(
    stack: PeopleStack, tmp_path: Path
) -> None:
    """The composition `incidents intake` runs: the monitors' app + `with_people` (phone routes on the
    same HTTP, the SMTP server in its lifespan)."""
    config = tmp_path / "integrations.yaml"
    config.write_text("integrations:\n  prom: {kind: alertmanager, region: au, auth: {bearer_token: t}}\n")
    intake_settings = IntakeSettings(
        kafka_bootstrap_servers=stack.settings.kafka_bootstrap_servers,
        database_url=stack.settings.database_url, intake_kafka_timeout_ms=5000,
    )  # fmt: skip
    people = stack.settings.model_copy(
        update={"intake_smtp_port": free_port(), "intake_smtp_mailboxes": {"support@support.test": Mailbox()}}
    )
    app = with_people(create_app(IntakeService(intake_settings, load_integrations(config))), people)
    async with app.router.lifespan_context(app):
        provider = Provider(stack)
        provider.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC)
        new = sms("au", CALLER, "NEW high Lifts stuck on level 3")
        assert "opened (high, au)" in message(await provider.post("/v1/sms/au", new))
        assert (await provider.post("/v1/sms/au", new, sign=False)).status_code == 403
        assert (await provider.client.get("/livez")).status_code == 200  # the monitors' app is there
        report = EmailMessage()
        report["From"], report["To"], report["Subject"] = "gus@customer.test", "support@support.test", "VPN"
        report["Message-ID"] = f"<{uuid.uuid4().hex}@mua.test>"
        report.set_content("down")

        def deliver() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", people.intake_smtp_port, timeout=30) as client:
                return client.sendmail("gus@customer.test", ["support@support.test"], report.as_string())

        assert await asyncio.to_thread(deliver) == {}
    incident = derived_id("phone-au", new["MessageSid"], length=20)
    await engine_state(stack.engine, incident, "reported")
    mailed = derived_id("email", str(report["Message-ID"]), length=20)
    await engine_state(stack.engine, mailed, "reported")
    assert [e["source"] for e in stack.tail.of(mailed)] == ["/channels/email", "/channels/email"]
    with pytest.raises(OSError):  # the lifespan closed the SMTP server
        await asyncio.to_thread(smtplib.SMTP, "127.0.0.1", people.intake_smtp_port, timeout=5)

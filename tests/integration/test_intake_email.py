"""The support mailbox end to end: smtplib -> the intake's SMTP server -> Kafka -> the real engine."""

from __future__ import annotations

import asyncio
import email.policy
import ipaddress
import smtplib
import ssl
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest
from pydantic import SecretStr

from devstack.stack import Service
from incident_intake.email.server import start_smtp_server
from incident_intake.people_common import Publisher, derived_id
from tests.integration.intake_helpers import PeopleStack, engine_state, free_port, people_stack

pytestmark = pytest.mark.integration

DOMAIN = "support.test"
MAILBOXES = {
    f"support@{DOMAIN}": {},  # open to anyone; severity/region from +tags or the defaults
    f"support-us@{DOMAIN}": {"region": "us"},
    f"vip@{DOMAIN}": {"region": "uk", "severity": "critical"},  # an allowlist (rows below)
}
RESPONDER = "oncall@ops.test"


@pytest.fixture(scope="module")
async def stack(kafka: Service, postgres: Service) -> AsyncIterator[PeopleStack]:
    """Engine + intake, mailboxes as above, a responder on every mailbox, vip@ for customer.test only."""
    async with people_stack(
        kafka.url, postgres.url, intake_smtp_mailboxes=MAILBOXES, intake_smtp_max_message_bytes=64_000
    ) as running:
        rows = [(m, RESPONDER, True) for m in MAILBOXES] + [(f"vip@{DOMAIN}", "@customer.test", False)]
        await running.channels.store.pool.executemany(
            "INSERT INTO intake_email_senders (mailbox, sender, can_change) VALUES ($1, $2, $3)", rows
        )
        yield running


def mail(
    sender: str, to: str, subject: str, body: str, *, reply_to: EmailMessage | None = None, **headers: str
) -> EmailMessage:
    """A message with a fresh Message-ID (threaded onto `reply_to` when given)."""
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, to, subject
    message["Message-ID"] = f"<{uuid.uuid4().hex}@mua.test>"
    if reply_to is not None:
        message["In-Reply-To"] = reply_to["Message-ID"]
        message["References"] = reply_to["Message-ID"]
    for name, value in headers.items():
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return message


def _send(port: int, message: EmailMessage, envelope_from: str | None) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("mta.test")
        sender = str(message["From"]) if envelope_from is None else envelope_from
        code, answer = client.mail(sender)
        if code != 250:
            return code, answer.decode()
        code, answer = client.rcpt(str(message["To"]))
        if code not in (250, 251):
            return code, answer.decode()
        code, answer = client.data(message.as_bytes(policy=email.policy.SMTP))  # CRLF line ends
        return code, answer.decode()


async def send(
    stack: PeopleStack, message: EmailMessage, envelope_from: str | None = None
) -> tuple[int, str]:
    """Deliver over SMTP as a sending server would (MAIL, RCPT, DATA); the final code and text."""
    return await asyncio.to_thread(_send, stack.settings.intake_smtp_port, message, envelope_from)


def incident_of(message: EmailMessage) -> str:
    """The incident id the intake derives from a new message's Message-ID."""
    return derived_id("email", str(message["Message-ID"]), length=20)


async def test_new_incident_then_threaded_ack_token_update_and_restore(stack: PeopleStack) -> None:
    report = mail("Ann <ann@customer.test>", f"support-us+critical@{DOMAIN}", "Checkout is down",
                  "Every payment fails since 10:02.\nOrder 77 is stuck.")  # fmt: skip
    code, answer = await send(stack, report)
    assert code == 250 and "opened (critical, us)" in answer, answer
    number = answer.split()[1]
    assert number.startswith("INC-")
    incident = incident_of(report)
    tail = stack.tail
    await tail.wait_for(lambda: len(tail.of(incident)) == 2, what="reported + details")
    reported, details = tail.of(incident)
    assert reported["type"] == "incident.reported" and reported["source"] == "/channels/email"
    assert reported["data"] == {"severity": "critical", "region": "us", "summary": "Checkout is down"}
    assert reported["reporter"] == "ann@customer.test" and reported["_key"] == incident
    # the trace starts at the SMTP message: its span is the parent carried in the Kafka headers
    trace_id = reported["_headers"]["traceparent"].split("-")[1]
    (span,) = [s for s in stack.spans.get_finished_spans() if s.attributes.get("incident.id") == incident]
    assert span.name == "smtp message" and format(span.context.trace_id, "032x") == trace_id
    assert details["type"] == "incident.updated" and "Order 77 is stuck." in details["data"]["note"]
    body = await engine_state(stack.engine, incident, "reported")
    assert body["severity"] == "critical" and body["region"] == "us"

    # the responder replies in the thread: "ack" on the first line, the quote below
    ack = mail(RESPONDER, f"support-us@{DOMAIN}", "Re: Checkout is down",
               "Ack\n\nOn Mon, Ann wrote:\n> Every payment fails", reply_to=report)  # fmt: skip
    code, answer = await send(stack, ack)
    assert code == 250 and f"incident.acknowledged for {number}" in answer, answer
    await engine_state(stack.engine, incident, "acknowledged")

    # the customer answers by the subject's token, no threading headers: a note, no state change
    note = mail("ann@customer.test", f"support@{DOMAIN}", f"More on [{number}]", "Refunds fail too.")
    code, answer = await send(stack, note)
    assert code == 250 and "incident.updated" in answer, answer
    await tail.wait_for(lambda: len(tail.of(incident, "incident.updated")) == 2, what="the note")
    assert tail.of(incident, "incident.updated")[1]["data"]["note"] == "ann@customer.test: Refunds fail too."

    # the customer cannot command the incident; the responder can, by token
    code, answer = await send(
        stack, mail("ann@customer.test", f"support@{DOMAIN}", f"[{number}]", "restored")
    )
    assert code == 550 and "may not change incidents" in answer, answer
    restore = mail(RESPONDER, f"support@{DOMAIN}", f"Re: [{number}] Checkout", "Restored\nfailed the DB back")
    code, answer = await send(stack, restore)
    assert code == 250 and "incident.restored" in answer, answer
    body = await engine_state(stack.engine, incident, "restored")
    assert [t["type"] for t in body["timeline"]] == [
        "incident.reported", "incident.updated", "incident.acknowledged", "incident.updated",
        "incident.restored",
    ]  # fmt: skip
    assert tail.of(incident, "incident.restored")[0]["data"] == {"note": "failed the DB back"}

    # the same restore re-delivered (a sending server that missed our 250): accepted, published once
    assert (await send(stack, restore))[0] == 250
    await asyncio.sleep(0.5)
    assert len(tail.of(incident, "incident.restored")) == 1


async def test_auto_replies_and_bounces_are_dropped(stack: PeopleStack) -> None:
    report = mail("bob@customer.test", f"support@{DOMAIN}", "VPN flaps", "since noon")
    assert (await send(stack, report))[0] == 250
    incident = incident_of(report)
    await stack.tail.wait_for(lambda: len(stack.tail.of(incident)) == 2)
    auto = mail("bob@customer.test", f"support@{DOMAIN}", "Out of office", "back Monday",
                reply_to=report, Auto_Submitted="auto-replied")  # fmt: skip
    code, answer = await send(stack, auto)
    assert code == 250 and "dropped" in answer and "Auto-Submitted" in answer
    bulk = mail("news@list.test", f"support@{DOMAIN}", "Newsletter", "hi", Precedence="bulk")
    assert "dropped" in (await send(stack, bulk))[1]
    bounce = mail("MAILER-DAEMON@mta.test", f"support@{DOMAIN}", f"Undelivered: [{incident}]", "gone")
    code, answer = await send(stack, bounce, envelope_from="")
    assert code == 250 and "null sender" in answer
    await asyncio.sleep(1.0)
    assert len(stack.tail.of(incident)) == 2  # nothing more for the incident
    assert stack.tail.of(incident_of(bulk)) == [] and stack.tail.of(incident_of(bounce)) == []
    await engine_state(stack.engine, incident, "reported")


async def test_senders_outside_the_allowlist_and_unknown_mailboxes_are_refused(stack: PeopleStack) -> None:
    stranger = mail("eve@elsewhere.test", f"vip@{DOMAIN}", "Please open", "x")
    code, answer = await send(stack, stranger)
    assert code == 550 and "may not write" in answer, answer
    nobody = mail("eve@elsewhere.test", f"sales@{DOMAIN}", "hello", "x")
    code, answer = await send(stack, nobody)
    assert code == 550 and "no such support mailbox" in answer
    customer = mail("carol@customer.test", f"vip@{DOMAIN}", "Reports are empty", "since the upgrade")
    code, answer = await send(stack, customer)
    assert code == 250 and "(critical, uk)" in answer  # from the mailbox's own configuration
    big = mail("carol@customer.test", f"vip@{DOMAIN}", "attachment", ("x" * 70 + "\n") * 1000)
    code, answer = await send(stack, big)
    assert code == 552 and "Too much mail data" in answer, (code, answer)
    await stack.tail.wait_for(lambda: len(stack.tail.of(incident_of(customer))) == 2)
    await engine_state(stack.engine, incident_of(customer), "reported")
    assert stack.tail.of(incident_of(stranger)) == [] and stack.tail.of(incident_of(big)) == []
    refused = await stack.channels.store.pool.fetchval(
        "SELECT count(*) FROM intake_people_incidents WHERE reporter = 'eve@elsewhere.test'"
    )
    assert refused == 0


async def test_kafka_down_is_a_4xx_and_the_retry_succeeds(stack: PeopleStack) -> None:
    live = stack.channels.mailbox.publisher
    dead_settings = stack.settings.model_copy(update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}"})
    stack.channels.mailbox.publisher = Publisher(dead_settings, timeout=2.0)
    report = mail("dan@customer.test", f"support+low+au@{DOMAIN}", "Slow search", "p95 at 4 s")
    try:
        code, answer = await send(stack, report)
        assert code == 451 and "try again later" in answer, answer
    finally:
        await stack.channels.mailbox.publisher.close()
        stack.channels.mailbox.publisher = live
    incident = incident_of(report)
    assert stack.tail.of(incident) == []
    code, answer = await send(stack, report)  # the sending server's retry, same Message-ID
    assert code == 250 and "opened (low, au)" in answer
    await engine_state(stack.engine, incident, "reported")
    await asyncio.sleep(0.5)
    assert [e["type"] for e in stack.tail.of(incident)] == ["incident.reported", "incident.updated"]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 and its key, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "intake.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return certfile, keyfile


async def test_starttls_and_auth_when_configured(stack: PeopleStack, tmp_path: Path) -> None:
    certfile, keyfile = self_signed(tmp_path)
    settings = stack.settings.model_copy(
        update={
            "intake_smtp_port": free_port(), "intake_smtp_tls_certfile": certfile,
            "intake_smtp_tls_keyfile": keyfile, "intake_smtp_require_starttls": True,
            "intake_smtp_auth_users": {"relay": SecretStr("relay-password")},
        }
    )  # fmt: skip
    server = await start_smtp_server(settings, stack.channels.mailbox)
    trust = ssl.create_default_context(cafile=str(certfile))
    report = mail("fay@customer.test", f"support@{DOMAIN}", "Forwarded: portal 502", "via the relay")

    def session() -> list[object]:
        seen: list[object] = []
        with smtplib.SMTP("127.0.0.1", settings.intake_smtp_port, timeout=30) as client:
            client.ehlo("relay.test")
            seen.append(client.mail("fay@customer.test"))  # refused before STARTTLS
            client.starttls(context=trust)
            client.ehlo("relay.test")
            seen.append(client.mail("fay@customer.test"))  # refused before AUTH
            try:
                client.login("relay", "wrong")
            except smtplib.SMTPAuthenticationError as exc:
                seen.append(exc.smtp_code)
            client.login("relay", "relay-password")
            seen.append(client.sendmail("fay@customer.test", [f"support@{DOMAIN}"], report.as_string()))
        return seen

    try:
        before_tls, before_auth, wrong, refused = await asyncio.to_thread(session)
    finally:
        server.close()
        await server.wait_closed()
    assert before_tls[0] == 530 and b"STARTTLS" in before_tls[1]  # type: ignore[index]
    assert before_auth[0] == 530 and b"uthentication required" in before_auth[1]  # type: ignore[index]
    assert wrong == 535 and refused == {}
    await engine_state(stack.engine, incident_of(report), "reported")
    assert stack.tail.of(incident_of(report))[0]["data"]["summary"] == "Forwarded: portal 502"

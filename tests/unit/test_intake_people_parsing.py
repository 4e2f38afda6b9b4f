"""Pure parts of the people channels: mail reading, reply commands, tags, allowlists, SMS, STATUS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from incident_contracts import InputError
from incident_intake.email.handler import sender_allowed
from incident_intake.email.parse import address_tags, html_to_text, parse_mail, reply_command, reply_text
from incident_intake.people_common import derived_id, format_number, input_event, parse_number
from incident_intake.phone.sms import SmsCommand, parse_sms
from incident_intake.phone.status import describe_status

pytestmark = pytest.mark.unit


def raw(headers: str, body: str = "hello") -> bytes:
    return (headers.strip() + "\r\n\r\n" + body).replace("\n", "\r\n").encode()


def test_html_bodies_are_reduced_to_text_without_scripts() -> None:
    html = "<html><head><style>p{}</style></head><body><p>Site <b>down</b>&amp; slow</p>" \
           "<script>alert(1)</script><div>since&nbsp;10:02</div><br>bye</body></html>"  # fmt: skip
    assert html_to_text(html) == "Site down& slow\n\nsince 10:02\n\nbye"


def test_parse_mail_reads_ids_sender_subject_and_prefers_plain_text() -> None:
    message = raw(
        """
From: Ann <Ann@Customer.test>
Subject: Checkout   is down
Message-ID: <m1@mua.test>
In-Reply-To: <a@x>
References: <root@x> <a@x>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary=b

--b
Content-Type: text/plain

plain body
--b
Content-Type: text/html

<p>html body</p>
--b--
""",
        "",
    )
    mail = parse_mail(message, "bounce@customer.test")
    assert mail.message_id == "<m1@mua.test>" and mail.sender == "ann@customer.test"
    assert mail.subject == "Checkout is down" and mail.text == "plain body"
    assert mail.references == ["<a@x>", "<root@x>"]  # the direct parent first
    assert mail.automatic is None


def test_html_only_mail_and_a_missing_message_id_derived_from_the_bytes() -> None:
    message = raw("From: b@c.test\nSubject: s\nContent-Type: text/html", "<p>only <i>html</i></p>")
    first, again = parse_mail(message, "b@c.test"), parse_mail(message, "b@c.test")
    assert first.text == "only html"
    assert first.message_id == again.message_id and first.message_id.endswith("@intake.derived>")


@pytest.mark.parametrize(
    ("headers", "envelope", "why"),
    [
        ("Auto-Submitted: auto-replied", "a@b.test", "Auto-Submitted: auto-replied"),
        ("Auto-Submitted: no", "a@b.test", None),
        ("Precedence: bulk", "a@b.test", "Precedence: bulk"),
        ("X-Autoreply: yes", "a@b.test", "X-Autoreply"),
        ("Content-Type: multipart/report; report-type=delivery-status", "a@b.test", "delivery report"),
        ("X-Other: 1", "", "null sender"),
        ("X-Other: 1", "<>", "null sender"),
    ],
)
def test_auto_replies_and_bounces_are_recognised(headers: str, envelope: str, why: str | None) -> None:
    mail = parse_mail(raw(f"From: a@b.test\nSubject: s\n{headers}"), envelope)
    assert (mail.automatic is None) if why is None else (why in (mail.automatic or ""))


@pytest.mark.parametrize(
    ("body", "command"),
    [
        ("ack", "acknowledged"),
        ("ACK.\n\nthanks", "acknowledged"),
        ("  Investigating  \nlooking", "investigating"),
        ("Failed over", "failed_over"),
        ("failed-over!", "failed_over"),
        ("Restored\n> ack", "restored"),
        ("thanks, ack soon", None),
        ("> ack\nquoted only", None),
        ("", None),
    ],
)
def test_reply_commands_come_from_the_first_line_above_the_quote(body: str, command: str | None) -> None:
    assert reply_command(body) == command


def test_reply_text_stops_at_the_quote() -> None:
    text = "new words\nmore\n\nOn Mon, 1 Dec 2026, Ann wrote:\n> old words"
    assert reply_text(text) == "new words\nmore"
    assert reply_text("top\n-----Original Message-----\nold") == "top"


def test_address_tags() -> None:
    assert address_tags("<Support+Critical+us@Example.com>") == ("support@example.com", ["critical", "us"])
    assert address_tags("support@example.com") == ("support@example.com", [])


def test_allowlist_and_responders() -> None:
    open_box: dict[str, bool] = {}
    assert sender_allowed("x@y.test", open_box) and not sender_allowed("x@y.test", open_box, change=True)
    rules = {"@customer.test": False, "oncall@ops.test": True}
    assert sender_allowed("ann@customer.test", rules) and not sender_allowed("eve@evil.test", rules)
    assert sender_allowed("oncall@ops.test", rules, change=True)
    assert not sender_allowed("ann@customer.test", rules, change=True)
    responders_only = {"oncall@ops.test": True}  # no allowlist: anyone writes, responders command
    assert sender_allowed("anyone@else.test", responders_only)


def test_ids_numbers_and_events() -> None:
    assert derived_id("email", "<m@x>") == derived_id("email", "<m@x>") != derived_id("email", "<n@x>")
    assert format_number(1042) == "INC-1042" and parse_number("Re: [inc-1042] down") == 1042
    assert parse_number("no token") is None
    with pytest.raises(InputError):
        input_event("reported", "i", source="/channels/email", event_id="e", data={"severity": "huge"})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("NEW site down", SmsCommand("NEW", text="site down")),
        ("new Critical  db gone", SmsCommand("NEW", severity="critical", text="db gone")),
        ("new critical", SmsCommand("NEW", text="critical")),
        ("ACK INC-1042", SmsCommand("ACK", number=1042)),
        ("restored 1042", SmsCommand("RESTORED", number=1042)),
        ("status inc-7", SmsCommand("STATUS", number=7)),
        ("ACK", SmsCommand("HELP")),
        ("ACK soon", SmsCommand("HELP")),
        ("", SmsCommand("HELP")),
    ],
)
def test_sms_commands(body: str, expected: SmsCommand) -> None:
    assert parse_sms(body) == expected


def test_status_reads_the_clocks_in_the_lines_time_zone() -> None:
    due = datetime(2026, 7, 1, 4, 30, tzinfo=UTC)  # 14:30 in Sydney (AEST)
    body = {
        "state": "acknowledged", "severity": "critical", "region": "au",
        "clocks": {
            "ack": {"due_at": (due - timedelta(minutes=15)).isoformat(), "stopped_at": due.isoformat(),
                    "status": "met"},
            "restore": {"due_at": due.isoformat(), "stopped_at": None, "status": "running",
                        "remaining_seconds": 754.0, "remaining_business_seconds": 754.0},
            "update": {"due_at": due.isoformat(), "stopped_at": None, "status": "running",
                       "remaining_seconds": -3700.0, "remaining_business_seconds": None},
        },
    }  # fmt: skip
    text = describe_status("INC-1042", body, "Australia/Sydney")
    assert text.startswith("INC-1042 acknowledged (critical, au). ack: met; ")
    assert "restore: 13 min left (due 14:30 AEST)" in text
    assert "update: overdue by 1 h 2 min (due 14:30 AEST)" in text


def test_readme_lists_every_setting_of_the_people_channels() -> None:
    from pathlib import Path

    from incident_intake.people_settings import settings_table

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    block = readme.split("<!-- intake-people-config:start -->\n")[1].split(
        "\n<!-- intake-people-config:end -->"
    )[0]
    assert block == settings_table(), (
        "README.md's Intake: email and phone table is stale: replace it by the output of "
        "`.venv/bin/python -c 'from incident_intake.people_settings import settings_table as t; print(t())'`"
    )


def test_an_empty_smtp_auth_password_is_refused_at_start() -> None:
    """An AUTH user with an empty password would let anyone in under that name."""
    from pydantic import ValidationError

    from incident_intake.people_settings import EmailSettings

    with pytest.raises(ValidationError, match="the password of 'relay' is empty"):
        EmailSettings(intake_smtp_auth_users={"relay": " "})  # type: ignore[dict-item]
    assert EmailSettings(intake_smtp_auth_users={"relay": "pw"}).intake_smtp_auth_users  # type: ignore[dict-item]


async def test_an_oversized_webhook_body_is_refused_while_it_streams_not_after_buffering_it() -> None:
    """`POST /v1/sms/{line}` before any signature check: 413 after at most the limit (+ one chunk)
    was read, not after the whole (here 16 MiB, endless for all the server knows) body."""
    import httpx

    from incident_intake.people_settings import PhoneSettings
    from incident_intake.phone.webhooks import PhoneIntake, create_phone_app

    intake = PhoneIntake(PhoneSettings(), store=None, publisher=None, engine=None)  # type: ignore[arg-type]
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(256):
            sent += 65_536
            yield b"x" * 65_536

    transport = httpx.ASGITransport(app=create_phone_app(intake))
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        answer = await client.post("/v1/sms/au", content=body())
        assert answer.status_code == 413 and "over 65536 bytes" in answer.text
        assert sent <= 3 * 65_536, sent
        declared = await client.post("/v1/voice/au", content=b"x" * 70_000)
        assert declared.status_code == 413  # refused on its Content-Length
        small = await client.post("/v1/sms/au", data={"Body": "NEW x"})
        assert small.status_code == 403  # within the limit: on to the signature check


def test_notifier_tokens_name_the_engine_incident_and_are_never_people_numbers() -> None:
    from incident_contracts.mail_tokens import (
        incident_of_message_id,
        incident_of_subject,
        incident_token,
        notifier_message_id,
        without_tokens,
    )

    for incident in (
        "INC-2002",
        "email-0123456789abcdef0123",
        "2024-05-01-db",
        "db down ] ünïcode",
        "x" * 256,
    ):
        subject = f"Re: {incident_token(incident)} SLA breached: db down"
        assert incident_of_subject(subject) == incident
        assert parse_number(without_tokens(subject)) is None  # no people number hides in it
        message_id = notifier_message_id("0f" * 16, "duty-manager", incident, "example.com")
        assert incident_of_message_id(message_id) == incident
    assert incident_token("INC-2002") == "[INC:INC-2002]"
    assert parse_number("Re: [INC:INC-2002] SLA breached") is None  # even without the tokens cut out
    assert parse_number("Re: [INC-2002] more") == 2002  # the people number's own form
    assert incident_of_subject("Re: [INC-2002] more") is None
    assert incident_of_subject("[inc=!!] [INC=f] [INC:a b]") is None  # not base32 / not an id
    assert incident_of_message_id("<a1b2@mua.example>") is None
    assert incident_of_message_id("<notify.e1.m.mfrgg@x>") == "abc"
    assert incident_of_message_id("<notify.e1.m.AA@x>") is None  # decodes to a control character


@pytest.mark.parametrize(
    ("results", "authenticated", "trusts_auth", "trusted", "verified"),
    [
        ((), False, False, "", False),  # nothing vouches: the default
        ((), True, False, "", False),  # AUTH alone (a relay's) does not vouch for From
        ((), True, True, "", True),  # AUTH users are the responders' own servers
        (("relay.test; dmarc=pass header.from=ops.test",), False, False, "relay.test", True),
        (("relay.test; dmarc=pass (p=reject) header.from=OPS.test",), False, False, "mx.x, relay.test", True),
        (("relay.test; dkim=pass header.d=ops.test header.s=s1",), False, False, "relay.test", True),
        (("relay.test; dkim=pass header.i=@mail.ops.test",), False, False, "relay.test", False),
        (("relay.test; dkim=pass header.d=evil.test; dmarc=fail header.from=ops.test",), False, False,
         "relay.test", False),
        (("relay.test; dmarc=pass header.from=evil.test",), False, False, "relay.test", False),
        (("evil.test; dmarc=pass header.from=ops.test",), False, False, "relay.test", False),  # untrusted id
        # the relay's own header is on top; a forged one below never counts
        (("relay.test; dmarc=fail header.from=ops.test", "relay.test; dmarc=pass header.from=ops.test"),
         False, False, "relay.test", False),
        (("relay.test; ;;garbage", "relay.test; dmarc=pass header.from=ops.test"), False, False,
         "relay.test", False),
    ],
)  # fmt: skip
def test_a_command_s_from_is_verified_only_by_auth_or_a_trusted_relay_s_result(
    results: tuple[str, ...], authenticated: bool, trusts_auth: bool, trusted: str, verified: bool
) -> None:
    from incident_intake.email.verify import unverified_reason

    reason = unverified_reason(
        "oncall@ops.test", results, authenticated=authenticated, auth_trusts_from=trusts_auth,
        trusted_ids=trusted.split(","),
    )  # fmt: skip
    assert (reason is None) == verified, reason


def test_parse_mail_keeps_the_authentication_results_topmost_first() -> None:
    mail = parse_mail(
        raw(
            "Authentication-Results: relay.test;\n dmarc=pass header.from=ops.test\n"
            "Authentication-Results: forged.test; dmarc=pass\nFrom: oncall@ops.test\nSubject: x"
        ),
        "oncall@ops.test",
    )
    assert mail.authentication_results == (
        "relay.test; dmarc=pass header.from=ops.test", "forged.test; dmarc=pass"
    )  # fmt: skip

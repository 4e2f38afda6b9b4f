"""Pure parts of the people channels: mail reading, reply commands, tags, allowlists, SMS, STATUS."""

from __future__ import annotations

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

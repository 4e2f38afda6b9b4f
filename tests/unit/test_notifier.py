"""The notifier's pure parts: routing table, config validation, message shapes, retry decisions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from incident_contracts.models import NotificationDead
from incident_notifier.config import ConfigError, load, parse
from incident_notifier.messages import (
    email_message,
    headline,
    pagerduty_event,
    pagerduty_events,
    slack_message,
    subject_token,
)
from incident_notifier.routing import destinations_for
from incident_notifier.senders import PERMANENT, RETRY, RefusedAddress, check_address, classify_http
from incident_notifier.senders import retry_after_seconds as retry_after
from incident_notifier.service import backoff_seconds, dead_letter

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)

ESCALATION = {
    "destinations": {
        "team": {"type": "slack", "url": "https://hooks.slack.com/services/x"},
        "oncall": {"type": "pagerduty", "routing_key": {"env": "PD_KEY"}},
        "manager": {
            "type": "email",
            "to": ["m@example.com"],
            "from": "i@example.com",
            "smtp": {"host": "smtp"},
        },
        "automation": {"type": "webhook", "url": "https://failover.example.com/", "secrets": [{"env": "S"}]},
        "uk-desk": {"type": "slack", "url": {"env": "UK_SLACK"}},
    },
    "routes": [
        {"match": {"type": "incident.sla.warning", "threshold": 0.5}, "to": "team"},
        {"match": {"type": "incident.sla.warning", "threshold": 0.8}, "to": "oncall"},
        {"match": {"type": "incident.sla.breached"}, "to": ["oncall", "manager"]},
        {"match": {"type": "incident.failover.required"}, "to": "automation"},
        {"match": {"region": "uk", "severity": ["critical", "high"], "policy": "livepro-2"}, "to": "uk-desk"},
        {"match": {"type": "incident.sla.breached", "clock": "update"}, "to": "team"},
        {"match": {"type": "incident.state.changed", "state": ["restored", "failed_over"]}, "to": "oncall"},
    ],
}


def output(kind: str, **data: Any) -> dict[str, Any]:
    base = {"policy": "livepro-1", "severity": "critical", "region": "au", "summary": "payments down",
            "source": "/channels/phone/au", "due_at": (NOW - timedelta(minutes=6)).isoformat()}  # fmt: skip
    return {
        "id": "e1",
        "type": f"incident.{kind}",
        "subject": "INC-7",
        "time": NOW.isoformat(),
        "data": base | data,
    }


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (output("sla.warning", clock="ack", threshold=0.5), ["team"]),
        (output("sla.warning", clock="ack", threshold=0.8), ["oncall"]),
        (output("sla.breached", clock="ack"), ["oncall", "manager"]),
        (output("sla.breached", clock="update"), ["oncall", "manager", "team"]),
        (output("failover.required"), ["automation"]),
        (
            output("sla.breached", clock="ack", region="uk", policy="livepro-2"),
            ["oncall", "manager", "uk-desk"],
        ),
        (
            output(
                "sla.warning", clock="ack", threshold=0.5, region="uk", policy="livepro-2", severity="low"
            ),
            ["team"],
        ),
        (output("sla.retracted", clock="ack"), []),  # no route names it
        # state changes only where a route names them: not the catch-all uk-desk route
        (output("state.changed", to="acknowledged", region="uk", policy="livepro-2"), []),
        (output("state.changed", to="restored", region="uk", policy="livepro-2"), ["oncall"]),
        (output("rejected", reason="schema"), []),  # never notified
    ],
)
def test_routing_table(event: dict[str, Any], expected: list[str]) -> None:
    assert destinations_for(parse(ESCALATION), event) == expected


def test_shipped_example_is_valid() -> None:
    config = load(REPO / "deploy/local/notifier.yaml")
    breach = output("sla.breached", clock="ack")
    assert destinations_for(config, breach) == ["on-call", "duty-manager"]


def test_config_errors_name_every_path() -> None:
    bad = {
        "destinations": {"a": {"type": "webhook", "url": "ftp://x", "secrets": [{"value": "inline"}]}},
        "routes": [{"match": {"threshold": 1.5, "colour": "red"}, "to": ["a", "nobody"]}],
    }
    with pytest.raises(ConfigError) as caught:
        parse(bad, "n.yaml")
    text = str(caught.value)
    for where in (
        "destinations.a.url",
        "destinations.a.secrets[0]",
        "routes[0].match.threshold",
        "routes[0].match",
    ):
        assert f"\n  {where}:" in text
    with pytest.raises(ConfigError, match=r"routes\[0\]\.to: unknown destination 'nobody'"):
        parse({**ESCALATION, "routes": [{"to": ["team", "nobody"]}]})


def test_config_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the notifier config"):
        load(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("routes: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(tmp_path / "bad.yaml")


def test_secrets_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = parse(ESCALATION)
    for name in ("PD_KEY", "S", "UK_SLACK"):
        monkeypatch.delenv(name, raising=False)
    problems = config.check_secrets()
    assert any("PD_KEY" in p for p in problems) and any("UK_SLACK" in p for p in problems)
    monkeypatch.setenv("PD_KEY", "k")
    monkeypatch.setenv("UK_SLACK", "https://hooks.slack.com/x")
    monkeypatch.setenv("S", "not base64 !!")
    assert config.check_secrets() == ["destination automation: env S is not a whsec_ base64 secret"]
    monkeypatch.setenv("S", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    assert config.check_secrets() == []


def test_slack_message_has_what_a_reader_needs() -> None:
    message = slack_message(output("sla.breached", clock="ack"), "https://console.example.com", now=NOW)
    blocks = message["blocks"]
    assert blocks[0]["type"] == "header" and "SLA breached: INC-7" in blocks[0]["text"]["text"]
    assert "acknowledge SLA breached (6 min late)" in blocks[1]["text"]["text"]
    assert "payments down" in blocks[1]["text"]["text"]
    fields = " ".join(f["text"] for f in blocks[2]["fields"])
    assert "*Severity*\ncritical" in fields and "*Region*\nAU" in fields and "/channels/phone/au" in fields
    assert blocks[3]["elements"][0]["url"] == "https://console.example.com/incidents/INC-7"
    assert message["text"].startswith("SLA breached: INC-7")
    assert all(
        b["type"] != "actions" for b in slack_message(output("sla.breached", clock="ack"), None)["blocks"]
    )


def test_slack_shows_untrusted_text_as_text() -> None:
    hostile = "<!channel> db & <https://evil.example/login|Open incident> <@U123>"
    event = output(
        "sla.breached", clock="ack", summary=hostile, source="<!here>", region="<!everyone>",
        policy="a>b", severity="<x>",
    ) | {"subject": "INC-<!channel>", "id": "e<1>"}  # fmt: skip
    message = slack_message(event, "https://console.example.com", now=NOW)
    texts = [
        message["text"],
        message["blocks"][1]["text"]["text"],
        message["blocks"][-1]["elements"][0]["text"],
    ]
    texts += [f["text"] for f in message["blocks"][2]["fields"]]
    for text in texts:
        assert "<" not in text and ">" not in text.lstrip(">").replace("\n>", "\n"), text
    section = message["blocks"][1]["text"]["text"]
    assert (
        "&lt;!channel&gt; db &amp; &lt;https://evil.example/login|Open incident&gt; &lt;@U123&gt;" in section
    )
    assert "INC-&lt;!channel&gt;" in message["text"]
    fields = " ".join(f["text"] for f in message["blocks"][2]["fields"])
    assert "&lt;!here&gt;" in fields and "&lt;!EVERYONE&gt;" in fields and "a&gt;b" in fields
    assert message["blocks"][-1]["elements"][0]["text"] == "event `e&lt;1&gt;`"
    # plain text stays plain: the header is plain_text, Slack shows it as it is
    assert message["blocks"][0]["text"]["type"] == "plain_text"
    # ordinary text is unchanged
    plain = slack_message(output("sla.breached", clock="ack"), None, now=NOW)
    assert "payments down" in plain["blocks"][1]["text"]["text"]


def test_links_to_the_console_or_the_read_api() -> None:
    from incident_notifier.messages import incident_link

    event = output("sla.breached", clock="ack") | {"subject": "INC 7/x"}
    assert (
        incident_link(event, "https://h/console/incident?id={id}")
        == "https://h/console/incident?id=INC%207%2Fx"
    )
    assert incident_link(event, "https://h/") == "https://h/incidents/INC%207%2Fx"
    assert incident_link(event, None) is None


def test_warning_headline_needs_no_arithmetic() -> None:
    warning = output(
        "sla.warning", clock="ack", threshold=0.8, deadline=(NOW + timedelta(minutes=6)).isoformat()
    )
    assert headline(warning, NOW) == "INC-7: 80 % of the acknowledge SLA used, breaches in 6 min"


def test_email_threads_back_into_the_intake() -> None:
    mail = email_message(
        output("sla.breached", clock="ack"), "manager", "i@example.com", ("m@example.com",), None
    )
    assert mail["Subject"] == "[INC-7] SLA breached: payments down"
    assert mail["Message-ID"] == "<e1.manager@incident-notifier>"
    assert subject_token("42") == "[INC-42]"


def test_pagerduty_resolves_the_clocks_a_state_stops() -> None:
    restored = pagerduty_events(output("state.changed", to="restored", **{"from": "acknowledged"}), "k", None)
    assert [(e["event_action"], e["dedup_key"]) for e in restored] == [
        ("resolve", "INC-7/ack"), ("resolve", "INC-7/restore"), ("resolve", "INC-7/resolution"),
        ("resolve", "INC-7/update"),
    ]  # fmt: skip
    acked = pagerduty_events(output("state.changed", to="acknowledged"), "k", None)
    assert [e["dedup_key"] for e in acked] == ["INC-7/ack"]
    assert pagerduty_events(output("state.changed", to="reported"), "k", None) == []
    event = output("state.changed", to="failed_over", **{"from": "investigating"})
    assert headline(event) == "INC-7: failed over (was investigating)"


def test_pagerduty_trigger_and_resolve_share_the_dedup_key() -> None:
    trigger = pagerduty_event(output("sla.breached", clock="restore"), "key", None)
    resolve = pagerduty_event(output("sla.retracted", clock="restore"), "key", None)
    failover = pagerduty_event(output("failover.required"), "key", None)
    assert trigger["event_action"] == "trigger" and resolve["event_action"] == "resolve"
    assert trigger["dedup_key"] == resolve["dedup_key"] == failover["dedup_key"] == "INC-7/restore"
    assert (
        trigger["payload"]["severity"] == "critical" and trigger["payload"]["source"] == "/channels/phone/au"
    )


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (200, {}, "delivered"),
        (204, {}, "delivered"),
        (301, {"location": "https://x"}, PERMANENT),
        (400, {}, PERMANENT),
        (404, {}, PERMANENT),
        (408, {}, RETRY),
        (410, {}, PERMANENT),
        (429, {"retry-after": "7"}, RETRY),
        (500, {}, RETRY),
        (503, {}, RETRY),
    ],
)
def test_http_answers(status: int, headers: dict[str, str], expected: str) -> None:
    assert classify_http(status, headers).status == expected


def test_retry_after_and_backoff() -> None:
    assert retry_after("7") == 7.0
    assert retry_after("Mon, 02 Mar 2026 10:00:30 GMT", now=NOW) == 30.0
    assert retry_after("soon") is None and retry_after(None) is None
    rng = random.Random(1)
    delays = [backoff_seconds(n, 1.0, 60.0, None, 3600, rng) for n in range(1, 10)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert backoff_seconds(1, 1.0, 60.0, 120.0, 3600, rng) == 120.0  # Retry-After beats the backoff
    assert backoff_seconds(1, 1.0, 60.0, 99999.0, 3600, rng) == 3600  # within its cap


def test_retry_after_is_a_floor_on_the_backoff_never_a_shortcut() -> None:
    rng = random.Random(2)
    # Retry-After: 0 or 1 from a receiver in trouble: the exponential schedule still holds
    for attempts in range(1, 9):
        ceiling = min(300.0, 2.0 ** (attempts - 1))
        for retry_after_value in (0.0, 1.0):
            delay = backoff_seconds(attempts, 1.0, 300.0, retry_after_value, 3600, rng)
            assert max(ceiling / 2, retry_after_value) <= delay <= max(ceiling, retry_after_value)
    eight = sum(backoff_seconds(n, 1.0, 300.0, 0.0, 3600, rng) for n in range(1, 9))
    assert eight >= sum(min(300.0, 2.0 ** (n - 1)) / 2 for n in range(1, 9))  # >= 127.5 s, not ~0
    # a longer Retry-After wins, up to its own cap
    assert backoff_seconds(3, 1.0, 300.0, 30.0, 3600, rng) == 30.0
    assert backoff_seconds(3, 1.0, 300.0, 9999.0, 60.0, rng) == 60.0


async def test_private_addresses_are_refused_unless_allowed() -> None:
    for host in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1"):
        with pytest.raises(RefusedAddress, match="INCIDENTS_NOTIFIER_ALLOW_PRIVATE"):
            await check_address(host, 80, allow_private=False)
        await check_address(host, 80, allow_private=True)
    await check_address("93.184.215.14", 443, allow_private=False)


@pytest.mark.parametrize(
    "address",
    [
        "100.64.0.1",  # shared address space (CGNAT): not private to Python, not global either
        "100.100.100.200",  # Alibaba Cloud's metadata service
        "100.127.255.254",
        "192.0.0.1",  # IETF protocol assignments
        "198.18.0.1",  # benchmarking
        "192.0.2.1",  # documentation
        "0.0.0.0",
        "240.0.0.1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:100.64.0.1",
        "fc00::1",
        "fe80::1",
        "224.0.0.1",
    ],
)
async def test_every_non_global_address_is_refused(address: str) -> None:
    with pytest.raises(RefusedAddress, match="not a public address"):
        await check_address(address, 443, allow_private=False)
    await check_address(address, 443, allow_private=True)


async def test_public_addresses_pass() -> None:
    for address in ("93.184.215.14", "100.128.0.1", "8.8.8.8", "2606:4700::1111"):
        await check_address(address, 443, allow_private=False)


def test_dead_letter_quotes_the_output() -> None:
    event = output("sla.breached", clock="ack")
    config = parse(ESCALATION)
    letter = dead_letter(event, config.destinations["oncall"], 3, "HTTP 410")
    assert letter["type"] == "incident.notification.dead" and letter["subject"] == "INC-7"
    assert letter["data"] == {"destination": "oncall", "destination_type": "pagerduty", "attempts": 3,
                              "last_error": "HTTP 410", "output": event}  # fmt: skip
    assert letter["id"] == dead_letter(event, config.destinations["oncall"], 5, "other")["id"]
    NotificationDead.model_validate(letter)  # the contract's model of the dead-letter topic


def test_a_resent_delivery_that_dies_again_has_a_new_dead_letter_id() -> None:
    event = output("sla.breached", clock="ack")
    oncall = parse(ESCALATION).destinations["oncall"]
    first = dead_letter(event, oncall, 1, "HTTP 410")
    again = dead_letter(event, oncall, 1, "HTTP 410", resends=1)
    third = dead_letter(event, oncall, 1, "HTTP 410", resends=2)
    assert len({first["id"], again["id"], third["id"]}) == 3
    assert again["id"] == dead_letter(event, oncall, 8, "other", resends=1)["id"]  # one death, one id
    NotificationDead.model_validate(again)


def test_readme_documents_every_notifier_setting() -> None:
    from incident_engine.config_doc import NOTIFIER_END, NOTIFIER_START, notifier_table

    readme = (REPO / "README.md").read_text()
    block = f"{NOTIFIER_START}\n{notifier_table()}\n{NOTIFIER_END}"
    assert block in readme, "run `incidents config --write-readme`"


def test_committed_routing_schema_matches_the_code() -> None:
    from incident_engine.schemas_cli import NOTIFIER_SCHEMA, notifier_schema

    committed = (REPO / "schemas" / NOTIFIER_SCHEMA).read_bytes()
    assert committed == notifier_schema(), "schemas/notifier.schema.json is stale: `incidents schemas export`"


def test_readme_escalation_example_is_valid() -> None:
    import yaml

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Notifications") :]
    start = section.index("```yaml") + len("```yaml")
    block = section[start : section.index("```\n", start)]
    config = parse(yaml.safe_load(block), "README.md")
    assert destinations_for(config, output("sla.warning", clock="ack", threshold=0.8)) == ["on-call"]

"""The notifier against real Kafka, PostgreSQL and loopback receivers (HTTP, SMTP)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import yaml
from aiokafka import AIOKafkaConsumer
from aiosmtpd.controller import Controller
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from standardwebhooks import Webhook

from devstack.stack import Service, fresh_database
from incident_notifier.config import parse
from incident_notifier.service import Notifier
from incident_notifier.settings import NotifierSettings
from incident_platform.telemetry import create_providers
from tests.integration.notifier_helpers import Receiver, outputs, produce, state_changed, wait_for

pytestmark = pytest.mark.integration


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_for(kafka: Service, dsn: str, topic: str, **extra: Any) -> NotifierSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": kafka.url,
        "database_url": dsn,
        "incidents_notifier_topics": topic,
        "incidents_notifier_group": f"notifier-{uuid.uuid4().hex[:8]}",
        "incidents_notifier_dead_letter_topic": f"{topic}.dead",
        "incidents_notifier_allow_private": True,
        "incidents_notifier_backoff_base_ms": 50,
        "incidents_notifier_backoff_max_ms": 200,
        "incidents_notifier_timeout_ms": 2_000,
        "incidents_notifier_lease_ms": 3_000,
        "incidents_notifier_poll_ms": 50,
        "incidents_notifier_links_url": "https://console.example.com",
        **extra,
    }
    return NotifierSettings(**values)


@contextlib.asynccontextmanager
async def running(
    settings: NotifierSettings, config: dict[str, Any], spans: InMemorySpanExporter | None = None
) -> AsyncIterator[Notifier]:
    providers = create_providers("notifier-test", span_exporters=[spans] if spans else [])
    notifier = Notifier(settings, parse(config), providers)
    await notifier.start()
    try:
        yield notifier
    finally:
        await notifier.stop()


async def rows(dsn: str) -> dict[tuple[str, str], asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetch("SELECT * FROM notifier_deliveries")
    finally:
        await conn.close()
    return {(r["output_id"], r["destination"]): r for r in found}


async def dead_letters(kafka: Service, topic: str, count: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka.url, auto_offset_reset="earliest")
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(timeout):
            while len(found) < count:
                for messages in (await consumer.getmany(timeout_ms=200)).values():
                    found.extend(orjson.loads(m.value) for m in messages if m.value)
    finally:
        await consumer.stop()
    return found


class Sink:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        import email

        self.messages.append((envelope.rcpt_tos, email.message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp_sink() -> Iterator[tuple[Sink, int]]:
    sink = Sink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


@pytest.fixture
async def dsn(postgres: Service) -> str:
    return await fresh_database(postgres.url)


async def test_one_breach_reaches_a_signed_webhook_slack_pagerduty_and_email(
    kafka: Service, dsn: str, smtp_sink: tuple[Sink, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    sink, smtp_port = smtp_sink
    old, new = new_secret(), new_secret()
    monkeypatch.setenv("NT_OLD_SECRET", old)
    monkeypatch.setenv("NT_NEW_SECRET", new)
    monkeypatch.setenv("NT_PD_KEY", "pd-routing-key")
    topic = f"nt-fanout-{uuid.uuid4().hex[:8]}"
    (breach,) = outputs("fan", 1)
    event_time = datetime.now(UTC) - timedelta(minutes=10)
    breach["time"] = event_time.isoformat()
    (warning,) = outputs("warn", 1, kind="warning")  # routed to nobody: never delivered
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    traceparent = f"00-{trace_id}-{parent}-01".encode()
    await produce(kafka.url, topic, [breach, warning], headers=[("traceparent", traceparent)])
    restored = state_changed(breach["subject"], "acknowledged", "restored")  # resolves the page
    await produce(kafka.url, topic, [restored, state_changed("INC-fan-9", "reported", "acknowledged")])
    spans = InMemorySpanExporter()
    async with Receiver() as receiver:
        config = {
            "destinations": {
                "automation": {
                    "type": "webhook",
                    "url": receiver.url("/hook"),
                    "secrets": [{"env": "NT_OLD_SECRET"}, {"env": "NT_NEW_SECRET"}],
                },
                "team": {"type": "slack", "url": receiver.url("/slack")},
                "paging": {
                    "type": "pagerduty",
                    "routing_key": {"env": "NT_PD_KEY"},
                    "url": receiver.url("/pd"),
                },
                "manager": {
                    "type": "email",
                    "to": ["duty@example.com"],
                    "from": "incidents@example.com",
                    "smtp": {"host": "127.0.0.1", "port": smtp_port},
                },
            },
            "routes": [
                {
                    "match": {"type": "incident.sla.breached"},
                    "to": ["automation", "team", "paging", "manager"],
                },
                {"match": {"type": "incident.state.changed", "state": "restored"}, "to": "paging"},
            ],
        }
        async with running(settings_for(kafka, dsn, topic), config, spans) as notifier:
            await wait_for(
                lambda: len(receiver.requests) >= 7 and sink.messages,
                30,
                "the webhook, Slack, PagerDuty and email",
            )
            await asyncio.sleep(0.5)  # anything more (a duplicate, the warning) would arrive now
            metrics, _ = notifier.providers.metrics_text()
            notifier.providers.tracer_provider.force_flush()
        # the same outputs read again (a restart before the offset commit, here a new group): the
        # idempotent schedule sends nothing twice
        requests, mails = len(receiver.requests), len(sink.messages)
        async with running(settings_for(kafka, dsn, topic), config) as again:
            await wait_for(lambda: again.assigned, 30, "the second notifier's partitions")
            await asyncio.sleep(2.0)
        assert (len(receiver.requests), len(sink.messages)) == (requests, mails)

    # the webhook: the output's id, this attempt's timestamp, one valid signature per secret
    (hook,) = receiver.at("/hook")
    assert hook.headers["webhook-id"] == breach["id"]
    stamp = int(hook.headers["webhook-timestamp"])
    assert abs(stamp - datetime.now(UTC).timestamp()) < 30 and abs(stamp - event_time.timestamp()) > 500
    assert len(hook.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        assert Webhook(secret).verify(hook.body, hook.headers) == breach
    with pytest.raises(Exception, match="No matching signature"):
        Webhook(new_secret()).verify(hook.body, hook.headers)

    # Slack: what breached, the summary, severity, region, how late, a link
    (slack,) = receiver.at("/slack")
    message = orjson.loads(slack.body)
    kinds = [b["type"] for b in message["blocks"]]
    assert kinds[:3] == ["header", "section", "section"] and "actions" in kinds
    assert "INC-fan-0" in message["blocks"][0]["text"]["text"]
    text = message["blocks"][1]["text"]["text"]
    assert "fan down 0" in text and "acknowledge SLA breached" in text and "late" in text
    fields = " ".join(f["text"] for f in message["blocks"][2]["fields"])
    assert "critical" in fields and "AU" in fields
    button = next(b for b in message["blocks"] if b["type"] == "actions")["elements"][0]
    assert button["url"] == "https://console.example.com/incidents/INC-fan-0"

    # PagerDuty Events v2: the breach triggers, the restoration resolves every clock's page
    pd, *resolves = receiver.at("/pd")
    page = orjson.loads(pd.body)
    assert [orjson.loads(r.body)["dedup_key"] for r in resolves] == [
        f"INC-fan-0/{clock}" for clock in ("ack", "restore", "resolution", "update")
    ]
    assert {orjson.loads(r.body)["event_action"] for r in resolves} == {"resolve"}
    assert page["routing_key"] == "pd-routing-key" and page["event_action"] == "trigger"
    assert page["dedup_key"] == "INC-fan-0/ack" and page["payload"]["severity"] == "critical"
    assert page["payload"]["source"] == "/channels/phone/au"

    # the email
    ((recipients, mail),) = sink.messages
    assert recipients == ["duty@example.com"]
    assert mail["Subject"].startswith("[INC-fan-0] SLA breached: fan down 0")
    assert mail["Message-ID"] == f"<{breach['id']}.manager@incident-notifier>"
    assert "fan down 0" in mail.get_payload()

    # a span per delivery, linked to the output's trace
    finished = spans.get_finished_spans()
    delivery_spans = [s for s in finished if (s.attributes or {}).get("cloudevents.event_id") == breach["id"]]
    assert sorted(s.name for s in delivery_spans) == [
        "notify email",
        "notify pagerduty",
        "notify slack",
        "notify webhook",
    ]
    for span in delivery_spans:
        assert [format(link.context.trace_id, "032x") for link in span.links] == [trace_id]
        assert span.attributes is not None and span.attributes["notifier.outcome"] == "delivered"

    stored = await rows(dsn)
    assert {k[1] for k in stored} == {"automation", "team", "paging", "manager"}  # not the warning
    assert len(stored) == 5  # the breach to four, the restoration to the pager; not the other change
    assert all(r["status"] == "delivered" and r["attempts"] == 1 for r in stored.values())
    assert b"notifier_deliveries_total" in metrics and b'outcome="delivered"' in metrics
    assert b"notifier_delivery_latency_seconds_bucket" in metrics


async def test_retries_back_off_honour_retry_after_and_dead_letter_permanent_failures(
    kafka: Service, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NT_SECRET", new_secret())
    topic = f"nt-retry-{uuid.uuid4().hex[:8]}"
    (breach,) = outputs("retry", 1)
    await produce(kafka.url, topic, [breach])
    async with Receiver() as receiver:
        receiver.script = {
            "/flaky": [(503, {}), (503, {})],
            "/limited": [(429, {"retry-after": "2"})],
            "/gone": [(410, {})],
            "/moved": [(301, {"location": "https://elsewhere.example.com/"})],
            "/down": [(500, {})] * 10,
        }
        receiver.delay = {"/slow": 3.0}  # slower than the whole retry dance of the others
        names = ["flaky", "limited", "gone", "moved", "down", "slow"]
        config = {
            "destinations": {
                n: {"type": "webhook", "url": receiver.url(f"/{n}"), "secrets": [{"env": "NT_SECRET"}]}
                for n in names
            },
            "routes": [{"to": names}],
        }
        settings = settings_for(
            kafka, dsn, topic, incidents_notifier_max_attempts=3,
            incidents_notifier_timeout_ms=5_000, incidents_notifier_lease_ms=7_000,
        )  # fmt: skip
        async with running(settings, config):
            await wait_for(
                lambda: len(receiver.acknowledged("/limited")) == 1, 30, "the rate-limited delivery"
            )
            await wait_for(lambda: len(receiver.at("/down")) == 3, 30, "three attempts at the failing one")
            await wait_for(lambda: bool(receiver.acknowledged("/slow")), 30, "the slow one")
            letters = await dead_letters(kafka, f"{topic}.dead", 3)
            await asyncio.sleep(0.5)
            stored = await rows(dsn)

    assert receiver.acknowledged("/flaky") == [breach["id"]] and len(receiver.at("/flaky")) == 3
    assert {r.headers["webhook-id"] for r in receiver.at("/flaky")} == {breach["id"]}
    limited = receiver.at("/limited")
    assert len(limited) == 2 and limited[1].at - limited[0].at >= 1.9  # Retry-After, not the 50 ms backoff
    assert len(receiver.at("/gone")) == 1 and len(receiver.at("/moved")) == 1  # permanent: no retry
    assert len(receiver.at("/down")) == 3  # the configured attempts, then no more
    # the slow destination did not hold the others: they were done before its first answer
    assert receiver.acknowledged("/slow") == [breach["id"]]
    assert receiver.at("/flaky")[-1].at < receiver.at("/slow")[0].at + 3.0

    by_destination = {letter["data"]["destination"]: letter for letter in letters}
    assert set(by_destination) == {"gone", "moved", "down"}
    assert "HTTP 410" in by_destination["gone"]["data"]["last_error"]
    assert "redirect" in by_destination["moved"]["data"]["last_error"]
    assert "HTTP 500" in by_destination["down"]["data"]["last_error"]
    assert by_destination["down"]["data"]["attempts"] == 3
    assert all(
        letter["data"]["output"] == breach and letter["subject"] == breach["subject"] for letter in letters
    )
    status = {name: stored[(breach["id"], name)]["status"] for name in names}
    assert status == {"flaky": "delivered", "limited": "delivered", "gone": "dead", "moved": "dead",
                      "down": "dead", "slow": "delivered"}  # fmt: skip


async def test_sigkill_mid_retry_loses_nothing_and_resends_nothing_acknowledged(
    kafka: Service, dsn: str, tmp_path: Path
) -> None:
    secret = new_secret()
    topic = f"nt-kill-{uuid.uuid4().hex[:8]}"
    events = outputs("kill", 12)
    await produce(kafka.url, topic, events)
    async with Receiver() as receiver:
        # /steady acknowledges at once; /retrying fails every output three times before acknowledging
        receiver.script = {"/retrying": [(503, {}), (503, {}), (503, {})]}
        config = {
            "destinations": {
                n: {"type": "webhook", "url": receiver.url(f"/{n}"), "secrets": [{"env": "NT_SECRET"}]}
                for n in ("steady", "retrying")
            },
            "routes": [{"to": ["steady", "retrying"]}],
        }
        config_file = tmp_path / "notifier.yaml"
        config_file.write_text(yaml.safe_dump(config))
        port = free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
            "NT_SECRET": secret,
            "KAFKA_BOOTSTRAP_SERVERS": kafka.url,
            "DATABASE_URL": dsn,
            "INCIDENTS_NOTIFIER_CONFIG": str(config_file),
            "INCIDENTS_NOTIFIER_TOPICS": topic,
            "INCIDENTS_NOTIFIER_GROUP": f"notifier-{uuid.uuid4().hex[:8]}",
            "INCIDENTS_NOTIFIER_DEAD_LETTER_TOPIC": f"{topic}.dead",
            "INCIDENTS_NOTIFIER_ALLOW_PRIVATE": "true",
            "INCIDENTS_NOTIFIER_HTTP_HOST": "127.0.0.1",
            "INCIDENTS_NOTIFIER_HTTP_PORT": str(port),
            "INCIDENTS_NOTIFIER_BACKOFF_BASE_MS": "2000",  # 1..2 s each: the kill lands mid-retry
            "INCIDENTS_NOTIFIER_BACKOFF_MAX_MS": "2000",
            "INCIDENTS_NOTIFIER_TIMEOUT_MS": "1000",
            "INCIDENTS_NOTIFIER_LEASE_MS": "2000",
            "INCIDENTS_NOTIFIER_POLL_MS": "50",
            "OTEL_TRACES_EXPORTER": "none",
        }
        log = (tmp_path / "notifier.log").open("ab")

        def spawn() -> subprocess.Popen[bytes]:
            command = [sys.executable, "-m", "incident_engine.cli", "notify"]
            return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

        first = spawn()
        try:
            ids = {e["id"] for e in events}

            async def steady_recorded() -> bool:
                stored = await rows(dsn)
                return (
                    sum(1 for (_, d), r in stored.items() if d == "steady" and r["status"] == "delivered")
                    == 12
                )

            await wait_for(
                lambda: {r.headers["webhook-id"] for r in receiver.at("/retrying")} == ids, 60, "first tries"
            )
            async with asyncio.timeout(30):
                while not await steady_recorded():
                    await asyncio.sleep(0.05)
            assert not receiver.acknowledged("/retrying")  # mid-retry: nothing acknowledged there yet
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            before = len(receiver.requests)

            second = spawn()
            try:
                await wait_for(
                    lambda: len(receiver.acknowledged("/retrying")) == 12, 60, "every retried delivery"
                )
                async with httpx.AsyncClient() as client:
                    ready = await client.get(f"http://127.0.0.1:{port}/readyz")
                    metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
                await asyncio.sleep(1.0)  # a resend would come now
            finally:
                second.send_signal(signal.SIGTERM)
                assert second.wait(20) == 0
        finally:
            if first.poll() is None:
                first.kill()
            log.close()

    assert len(receiver.requests) > before  # the retries were the restarted notifier's
    assert sorted(receiver.acknowledged("/steady")) == sorted(ids)  # each once: none resent
    assert sorted(receiver.acknowledged("/retrying")) == sorted(ids)  # every one delivered, once
    assert len(receiver.at("/steady")) == 12
    assert ready.status_code == 200 and "notifier_attempts_total" in metrics
    stored = await rows(dsn)
    assert len(stored) == 24 and all(r["status"] == "delivered" for r in stored.values())


def pages(receiver: Receiver, path: str) -> list[tuple[str, str, int]]:
    """(action, dedup key, status) of each PagerDuty request at `path`, in arrival order."""
    found = []
    for r in receiver.at(path):
        body = orjson.loads(r.body)
        found.append((body["event_action"], body["dedup_key"], r.status))
    return found


async def test_pagerduty_trigger_and_resolve_land_in_order_and_a_stale_trigger_is_superseded(
    kafka: Service, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NT_PD_KEY", "pd-key")
    topic = f"nt-order-{uuid.uuid4().hex[:8]}"
    (breach,) = outputs("order", 1)
    late_breach, late_failover = outputs("late", 1) + outputs("late", 1, kind="failover")  # times: now
    incident, late = breach["subject"], late_breach["subject"]
    late_failover["subject"] = late
    async with Receiver() as receiver:
        # the breach's trigger is answered 503 Retry-After 2 once: a retry is due in 2 s
        receiver.script = {"/pd": [(503, {"retry-after": "2"})]}
        config = {
            "destinations": {
                "pd": {"type": "pagerduty", "routing_key": {"env": "NT_PD_KEY"}, "url": receiver.url("/pd")}
            },
            "routes": [
                {"to": "pd"},
                {"match": {"type": "incident.state.changed", "state": "acknowledged"}, "to": "pd"},
            ],
        }
        async with running(settings_for(kafka, dsn, topic), config):
            # 1. trigger (503, retry in 2 s), then the acknowledgement: its resolve waits for the trigger
            await produce(kafka.url, topic, [breach])
            await wait_for(lambda: len(receiver.at("/pd")) >= 1, 30, "the first trigger attempt")
            await produce(kafka.url, topic, [state_changed(incident, "reported", "acknowledged")])
            await wait_for(lambda: len(receiver.at("/pd")) >= 3, 30, "the retried trigger and the resolve")
            # 2. the resolve of `late` is delivered before its (earlier) breach is even scheduled, as
            # when the state topic is read ahead of the breaches topic: that trigger is not sent; the
            # failover order (another dedup key) is
            await produce(kafka.url, topic, [state_changed(late, "reported", "acknowledged")])
            await wait_for(lambda: len(receiver.at("/pd")) >= 4, 30, "the resolve of the late incident")
            await produce(kafka.url, topic, [late_breach, late_failover])
            await wait_for(lambda: len(receiver.at("/pd")) >= 5, 30, "the late failover order")
            await asyncio.sleep(1.0)  # a stale trigger would arrive now
            stored = await rows(dsn)

    key = f"{incident}/ack"
    assert pages(receiver, "/pd")[:3] == [("trigger", key, 503), ("trigger", key, 200),
                                          ("resolve", key, 200)]  # fmt: skip
    assert pages(receiver, "/pd")[3:] == [
        ("resolve", f"{late}/ack", 200),
        ("trigger", f"{late}/restore", 200),
    ]
    assert stored[(late_breach["id"], "pd")]["status"] == "superseded"
    assert "already resolved" in stored[(late_breach["id"], "pd")]["last_error"]
    assert stored[(late_failover["id"], "pd")]["status"] == "delivered"


async def test_two_workers_racing_on_one_row_cannot_overwrite_the_later_outcome(dsn: str) -> None:
    from incident_notifier.store import DeliveryStore, migrate_notifier
    from incident_platform.postgres import create_pool

    await migrate_notifier(dsn)
    pools = [await create_pool(dsn, max_size=2) for _ in range(2)]
    a, b = (DeliveryStore(pool) for pool in pools)
    try:
        events = outputs("race", 3)

        async def race(event: dict[str, Any]) -> tuple[int, int]:
            """A claims the row with a short lease, stalls past it; B claims the same row again."""
            row = (event["id"], "hook", event["subject"], event["type"], datetime.now(UTC), event, {})
            await a.enqueue([row])
            (mine,) = await a.claim("hook", 1, 0.2)
            await asyncio.sleep(0.3)
            (theirs,) = await b.claim("hook", 1, 30)
            assert theirs["output_id"] == mine["output_id"] == event["id"]
            return mine["attempts"], theirs["attempts"]

        async def status(output_id: str) -> str:
            return str((await rows(dsn))[(output_id, "hook")]["status"])

        # B delivers; A's late dead letter decision lands after: it changes nothing
        old, new = await race(events[0])
        assert (old, new) == (1, 2)
        assert await b.delivered(events[0]["id"], "hook", new)
        assert not await a.dead(events[0]["id"], "hook", old, "HTTP 410")
        assert await status(events[0]["id"]) == "delivered"
        # A's dead lands first (its lease is gone): refused, and B's success is still recorded
        await a.reschedule(events[0]["id"], "hook", old, 0, "x")  # no effect either
        old, new = await race(events[1])
        assert not await a.hold(events[1]["id"], "hook", old, 30)
        assert not await a.dead(events[1]["id"], "hook", old, "HTTP 410")
        assert await status(events[1]["id"]) == "pending"
        assert await b.delivered(events[1]["id"], "hook", new)
        assert await status(events[1]["id"]) == "delivered"
        # and the other way round: A's late success cannot undo B's dead letter
        old, new = await race(events[2])
        assert await b.dead(events[2]["id"], "hook", new, "HTTP 410")
        assert not await a.delivered(events[2]["id"], "hook", old)
        assert await status(events[2]["id"]) == "dead"
        # a resend makes it pending again, from its first attempt, one generation later
        env = {**os.environ, "DATABASE_URL": dsn}
        command = [sys.executable, "-m", "incident_engine.cli", "notify", "resend", "--destination", "hook"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().startswith("1 dead deliveries of 'hook' pending again")
        row = (await rows(dsn))[(events[2]["id"], "hook")]
        assert (row["status"], row["attempts"], row["resends"]) == ("pending", 0, 1)
        assert await a.resend(None) == 0  # nothing dead any more
        bad = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}
        refused = subprocess.run(command, env=bad, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert refused.stderr.startswith("incidents notify: cannot reach PostgreSQL")
    finally:
        for pool in pools:
            await pool.close()


async def test_connections_go_to_the_address_that_was_checked(
    smtp_sink: tuple[Sink, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The names are resolved once, by the notifier's resolver, and the connection goes to that very
    address (no second lookup a rebinding DNS could answer differently); Host and TLS stay the name."""
    import socket

    from incident_notifier.senders import DELIVERED, PERMANENT, Senders

    sink, smtp_port = smtp_sink
    lookups: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        # a DNS that knows two test names: each lookup is counted (a rebinding DNS would answer a
        # second lookup with another address)
        if isinstance(host, str) and host.endswith(".example.test"):
            lookups.append(host)
            host = "127.0.0.1"
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setenv("NT_SECRET", new_secret())
    (breach,) = outputs("pin", 1)
    async with Receiver() as receiver:
        config = parse({
            "destinations": {
                "hook": {"type": "webhook", "url": f"http://hook.example.test:{receiver.port}/pin",
                         "secrets": [{"env": "NT_SECRET"}]},
                "mail": {"type": "email", "to": ["duty@example.com"], "from": "incidents@example.com",
                         "smtp": {"host": "mail.example.test", "port": smtp_port}},
            },
            "routes": [{"to": ["hook", "mail"]}],
        })  # fmt: skip
        allowed = Senders(timeout=5, allow_private=True, links_url=None)
        refused = Senders(timeout=5, allow_private=False, links_url=None)
        try:
            hook, mail = config.destinations["hook"], config.destinations["mail"]
            assert (await allowed.attempt(hook, breach)).status == DELIVERED
            assert (await allowed.attempt(mail, breach)).status == DELIVERED
            assert lookups == ["hook.example.test", "mail.example.test"]  # once each: checked = used
            for destination in (hook, mail):
                outcome = await refused.attempt(destination, breach)
                assert outcome.status == PERMANENT and "not a public address" in str(outcome.error)
        finally:
            await allowed.close()
            await refused.close()
    (request,) = receiver.at("/pin")
    assert request.headers["host"] == f"hook.example.test:{receiver.port}"
    assert len(sink.messages) == 1

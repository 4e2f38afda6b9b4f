"""`incidents demo`: the engine, a generator of realistic incidents, and a live terminal view (rich)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections import Counter, deque
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
import typer
from aiokafka import AIOKafkaConsumer
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from incident_contracts import TOPIC_BREACHES, TOPIC_REJECTED, TOPIC_STATE
from incident_engine.config import Settings
from incident_engine.entrypoints.commands import build_event, publish_events

CHANNELS = ("/channels/email", "/channels/phone/au", "/channels/phone/us", "/channels/phone/uk",
            "/channels/monitor/prometheus")  # fmt: skip
SUMMARIES = ("No access for all users", "Timeouts on search", "Slow page loads", "Login errors for one site",
             "Intermittent 502s", "One user cannot edit articles")  # fmt: skip
COLOURS = {"incident.state.changed": "cyan", "incident.sla.warning": "yellow", "incident.sla.breached": "red",
           "incident.failover.required": "bold magenta", "incident.rejected": "dim"}  # fmt: skip


def story(rng: random.Random, now: datetime) -> list[tuple[float, dict[str, Any]]]:
    """One incident's events as (seconds from now to publish, event). Reported a little before the
    SLA edge so that warnings and breaches come within seconds, not minutes."""
    incident = f"INC-{uuid.uuid4().hex[:6].upper()}"
    severity = rng.choices(("critical", "high", "low"), weights=(2, 3, 5))[0]
    region = rng.choice(("au", "us", "uk"))
    channel = rng.choice(CHANNELS)
    # Critical clocks run 24x7: backdate the report so the 15-minute ack clock is nearly spent.
    backdate = timedelta(minutes=14, seconds=rng.randint(20, 55)) if severity == "critical" else timedelta(0)
    reported = now - backdate

    def ev(event_type: str, after: float, **data: Any) -> tuple[float, dict[str, Any]]:
        at = now + timedelta(seconds=after)
        built = build_event(
            event_type, incident, source=channel, time=at if after else reported,
            severity=severity, region=region, summary=rng.choice(SUMMARIES), extra=data,
        )  # fmt: skip
        return after, built

    steps = [ev("reported", 0)]
    ack_after = rng.uniform(2, 60)
    steps.append(ev(rng.choice(("acknowledged", "investigating")), ack_after))
    if rng.random() < 0.15:
        steps.append(ev("acknowledged", ack_after + 1))  # a second phone line acks too: duplicate
    if severity == "critical" and rng.random() < 0.4:
        steps.append(ev("failed_over", ack_after + rng.uniform(5, 40), site="backup-dc"))
    steps.append(ev("updated", ack_after + rng.uniform(3, 20), note="investigating logs"))
    steps.append(ev("restored", ack_after + rng.uniform(25, 120)))
    return steps


async def generate(bootstrap: str, rate: float, stop: asyncio.Event, settings: Settings) -> None:
    """Publish new incidents at `rate` per second, each event at its moment."""
    rng = random.Random()
    pending: list[tuple[datetime, dict[str, Any]]] = []
    next_incident = datetime.now(UTC)
    while not stop.is_set():
        now = datetime.now(UTC)
        if now >= next_incident:
            pending.extend((now + timedelta(seconds=s), e) for s, e in story(rng, now))
            next_incident = now + timedelta(seconds=rng.expovariate(rate))
        due = [e for at, e in pending if at <= now]
        pending = [(at, e) for at, e in pending if at > now]
        if due:
            await publish_events(bootstrap, due, settings)
        await asyncio.sleep(0.2)


async def watch(
    bootstrap: str, seen: deque[dict[str, Any]], counts: Counter[str], stop: asyncio.Event
) -> None:
    """Follow the output topics from their end."""
    consumer = AIOKafkaConsumer(TOPIC_STATE, TOPIC_BREACHES, TOPIC_REJECTED, bootstrap_servers=bootstrap,
                                auto_offset_reset="latest", group_id=None)  # fmt: skip
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                for record in records:
                    out = orjson.loads(record.value or b"{}")
                    counts[out.get("type", "?")] += 1
                    seen.appendleft(out)
    finally:
        await consumer.stop()


def render(
    seen: deque[dict[str, Any]],
    counts: Counter[str],
    status: dict[str, Any],
    notified: Counter[str] | None = None,
) -> Group:
    """The live view: totals, then the latest outputs."""
    totals = Table.grid(padding=(0, 2))
    totals.add_row(*(f"[{COLOURS.get(t, 'white')}]{t.removeprefix('incident.')}[/]: {n}"
                     for t, n in sorted(counts.items())))  # fmt: skip
    table = Table(expand=True, show_edge=False)
    for column in ("time", "incident", "output", "detail"):
        table.add_column(column)
    for out in list(seen)[:18]:
        data = out.get("data", {})
        kind = str(out.get("type", ""))
        if kind == "incident.state.changed":
            where = f"({data.get('severity')}, {data.get('region')})"
            detail = f"{data.get('from') or '∅'} → {data.get('to')} {where}"
        elif kind == "incident.rejected":
            detail = f"{data.get('reason')}: {str(data.get('detail'))[:60]}"
        else:
            due = str(data.get("due_at"))[11:19]
            detail = f"{data.get('clock', 'restore')} {data.get('threshold', '')} due {due}"
        label = f"[{COLOURS.get(kind, 'white')}]{kind.removeprefix('incident.')}[/]"
        table.add_row(str(out.get("time", ""))[11:19], out.get("subject") or "-", label, detail)
    head = (
        f"partitions {status.get('partitions')}  timers armed {status.get('timers')}"
        f"  batches {status.get('batches')}"
    )
    if notified is not None:
        head += "  notified: " + (", ".join(f"{k} {n}" for k, n in sorted(notified.items())) or "nothing yet")
    return Group(Panel(totals, title="incident SLA engine — live (Ctrl-C to stop)", subtitle=head), table)


async def run_demo(rate: float, duration: float | None) -> None:
    """Engine + generator + live view until Ctrl-C (or `duration` seconds)."""
    from incident_engine.entrypoints.app import EngineService

    settings = Settings()
    service = EngineService(settings)
    await service.start()
    stop = asyncio.Event()
    seen: deque[dict[str, Any]] = deque(maxlen=200)
    counts: Counter[str] = Counter()
    tasks = [
        asyncio.create_task(generate(settings.kafka_bootstrap_servers, rate, stop, settings)),
        asyncio.create_task(watch(settings.kafka_bootstrap_servers, seen, counts, stop)),
    ]
    notifier, sink = await start_notifier(settings)
    started = asyncio.get_running_loop().time()
    try:
        with Live(render(seen, counts, service.ready()), refresh_per_second=4, screen=False) as live:
            while duration is None or asyncio.get_running_loop().time() - started < duration:
                await asyncio.sleep(0.25)
                live.update(render(seen, counts, service.ready(), sink.counts))
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5)
        await notifier.stop()
        await sink.stop()
        await service.stop()


async def start_notifier(settings: Settings) -> tuple[Any, Any]:
    """The notifier beside the engine, from now on: warnings to a Slack-shaped channel and breaches
    and failover orders to a signed webhook, both on a loopback sink that verifies the signatures."""
    import os

    from incident_notifier.config import parse
    from incident_notifier.service import Notifier
    from incident_notifier.settings import NotifierSettings
    from incident_notifier.sink import DemoSink

    sink = DemoSink()
    await sink.start()
    os.environ["INCIDENTS_DEMO_WEBHOOK_SECRET"] = sink.secret
    routing = parse({
        "destinations": {
            "team": {"type": "slack", "url": sink.url("/slack")},
            "on-call": {"type": "webhook", "url": sink.url("/webhook"),
                        "secrets": [{"env": "INCIDENTS_DEMO_WEBHOOK_SECRET"}]},
        },
        "routes": [
            {"match": {"type": "incident.sla.warning"}, "to": "team"},
            {"match": {"type": ["incident.sla.breached", "incident.failover.required"]}, "to": "on-call"},
        ],
    })  # fmt: skip
    notifier_settings = NotifierSettings(
        kafka_bootstrap_servers=settings.kafka_bootstrap_servers, database_url=settings.database_url,
        incidents_notifier_group=f"incident-notifier-demo-{uuid.uuid4().hex[:6]}",
        incidents_notifier_start="latest", incidents_notifier_allow_private=True,
        incidents_notifier_poll_ms=100,
    )  # fmt: skip
    notifier = Notifier(notifier_settings, routing)
    await notifier.start()
    return notifier, sink


def demo_command(
    rate: Annotated[float, typer.Option(help="New incidents per second.")] = 1.0,
    duration: Annotated[
        float | None, typer.Option(help="Stop after this many seconds (default: Ctrl-C).")
    ] = None,
) -> None:
    """Run the engine with a generator of realistic incidents and a live view of what it emits."""
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    logging.getLogger("incident_engine.outputs").setLevel(logging.ERROR)  # the live view shows them
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(rate, duration))

"""In time means in time, on the live engine (real Kafka and PostgreSQL): whatever the lag, the engine's
outputs equal `simulate`'s on the same events, id for id, and `replay --check` agrees with its state.

- a backlog published while the engine is stopped (the issue's first case, ties at the deadlines
  among random incidents), read after it starts;
- a live stream that the engine lags behind (slowed commits, random pauses), on a policy of seconds;
- a rebalance in the middle of a backlog (a second replica joins);
- evidence in flight: an acknowledgement read within the grace sends nothing; one read after the
  breach went out retracts it.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from devstack.stack import Service, fresh_database
from incident_contracts import TOPIC_EVENTS
from incident_engine.config import REPO_ROOT, Settings
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.entrypoints.app import EngineService
from incident_engine.entrypoints.commands import publish_events, replay_check
from incident_engine.simulate import run_simulation
from tests.integration.engine_helpers import OutputCollector, event, settings_for, start_at_end

pytestmark = pytest.mark.integration

M = timedelta(minutes=1)
S = timedelta(seconds=1)
# A policy of seconds, so that a live stream can meet and breach clocks within a test.
FAST_POLICY = """
name: fast
description: Test policy, critical 24x7 in seconds.
warning_thresholds: [0.5, 0.8]
business_hours: {days: [mon, tue, wed, thu, fri], opens: "08:00", closes: "20:00"}
regions:
  au: {timezone: Australia/Sydney, holidays: {country: AU, subdiv: NSW}}
  us: {timezone: America/New_York, holidays: {country: US}}
  uk: {timezone: Europe/London, holidays: {country: GB, subdiv: ENG}}
severities:
  critical:
    calendar: 24x7
    clocks:
      ack: {budget: 4s}
      restore: {budget: 8s, failover: true}
  high:
    calendar: 24x7
    clocks:
      ack: {budget: 4s}
  low:
    calendar: 24x7
    clocks:
      ack: {budget: 4s}
"""


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("policies")
    for path in (REPO_ROOT / "policies").glob("*.yaml"):
        shutil.copy(path, folder / path.name)
    (folder / "fast.yaml").write_text(FAST_POLICY)
    return folder


async def new_settings(kafka: Service, postgres: Service, policy_dir: Path, **extra: Any) -> Settings:
    """Settings of a fresh database and group that starts at the current end of the input topic."""
    dsn = await fresh_database(postgres.url)
    settings = settings_for(kafka.url, dsn, incidents_policy_dir=policy_dir, **extra)
    await start_at_end(kafka.url, dsn, settings.incidents_consumer_group)
    return settings


def simulated(
    events: list[dict[str, Any]], until: datetime, policy_dir: Path, default: str = "livepro-1"
) -> list[dict[str, Any]]:
    """`simulate` on the same events, in the order they were published."""
    outputs: list[Any] = []
    domain = SlaDomain(PolicyRegistry.load(policy_dir), default)
    run_simulation((orjson.dumps(e) for e in events), until, domain, outputs.extend)
    return [orjson.loads(o.to_json_bytes()) for o in outputs]


def view(outputs: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    """Outputs by id (a replica's re-send carries the same id), as what a reader compares: type,
    incident, clock, threshold, due moment, transition."""
    seen: dict[str, tuple[Any, ...]] = {}
    for o in outputs:
        d = o["data"]
        seen[o["id"]] = (
            o["type"], o["subject"], d.get("clock"), d.get("threshold"),
            d.get("due_at") and datetime.fromisoformat(d["due_at"]), d.get("from"), d.get("to"),
        )  # fmt: skip
    return seen


def differ(
    live: dict[str, tuple[Any, ...]], sim: dict[str, tuple[Any, ...]], events: list[dict[str, Any]]
) -> str:
    """What differs, with the input events of the incidents concerned."""
    extra = sorted(v for k, v in live.items() if k not in sim)
    missing = sorted(v for k, v in sim.items() if k not in live)
    concerned = {v[1] for v in extra + missing}
    inputs = [(e["subject"], e["type"], e["time"]) for e in events if e["subject"] in concerned]
    return f"only live: {extra}\nonly simulate: {missing}\ntheir events: {inputs}"


async def settle(out: OutputCollector, expected: int, quiet: float = 8.0, timeout: float = 120.0) -> None:
    """Wait for at least `expected` outputs, then until nothing new arrives for `quiet` seconds."""
    await out.wait_for(lambda: len(view(out.events)) >= expected, timeout, f"{expected} outputs")
    count, since = len(out.events), time.monotonic()
    while time.monotonic() - since < quiet:
        await asyncio.sleep(0.2)
        if len(out.events) != count:
            count, since = len(out.events), time.monotonic()


def backlog(prefix: str, rng: random.Random, start: datetime, count: int) -> list[dict[str, Any]]:
    """Critical incidents (livepro-1) whose acks and restores fall before, at and after their due
    moments; the issue's two examples first. Every event in time order, as channels would send them."""
    timed: list[tuple[datetime, dict[str, Any]]] = []

    def add(incident: str, at: datetime, kind: str, **data: Any) -> None:
        timed.append((at, event(kind, incident, at, **data)))

    t = start
    add(prefix + "met", t, "reported", severity="critical", region="au")  # issue 18, case 1
    add(prefix + "met", t + 5 * M, "acknowledged")
    add(prefix + "met", t + 20 * M, "restored")
    add(prefix + "tie", t, "reported", severity="critical", region="us")  # issue 18, case 2
    add(prefix + "tie", t + 15 * M, "acknowledged")
    add(prefix + "tie", t + 30 * M, "restored")
    for i in range(count):
        incident = f"{prefix}{i}"
        at = start + rng.randrange(0, 90) * M + rng.randrange(0, 60) * S
        add(incident, at, "reported", severity="critical", region=rng.choice(["au", "us", "uk"]))
        ack = rng.choice([2 * M, 7.5 * M, 12 * M, 15 * M, 15 * M + S, 25 * M, None])
        if ack is not None:
            add(incident, at + ack, rng.choice(["acknowledged", "investigating"]))
        end = rng.choice([20 * M, 30 * M, 30 * M + S, 45 * M, None])
        if end is not None and (ack is None or end > ack):
            add(incident, at + end, rng.choice(["restored", "failed_over"]))
    timed.sort(key=lambda pair: pair[0])
    return [e for _, e in timed]


def slow_commits(service: EngineService, rng: random.Random, most: float) -> None:
    """Make the engine lag: each batch's commit takes a random pause longer (after it started, as a
    slow database would: its rows are taken when it starts)."""
    assert service.loop is not None
    processor = service.loop.processor
    commit: Callable[..., Awaitable[None]] = processor.commit

    async def slowly(result: Any, after: Awaitable[object] | None = None) -> None:
        await commit(result, after)
        await asyncio.sleep(rng.uniform(0, most))

    processor.commit = slowly  # type: ignore[method-assign]


async def check_replay(settings: Settings) -> None:
    """`incidents replay --check`: the log replayed equals the live projections; on a difference,
    the two states of the first incident concerned are shown."""
    dsn = settings.database_url.get_secret_value()
    _, incidents, problems = await replay_check(dsn, settings)
    assert incidents > 0
    if problems:
        import asyncpg

        from incident_engine.replay import rebuild

        incident_id = problems[0].split(":")[0]
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT incident_id, seq, processed_at, envelope FROM event_log WHERE incident_id = $1",
                incident_id,
            )
            firings = await conn.fetch(
                "SELECT incident_id, fired_at, fire_until, breach_until FROM timer_firings"
                " WHERE incident_id = $1",
                incident_id,
            )
            body = await conn.fetchval("SELECT body FROM incidents WHERE incident_id = $1", incident_id)
        finally:
            await conn.close()
        domain = SlaDomain(PolicyRegistry.load(settings.incidents_policy_dir))
        replayed = rebuild(domain, rows, [tuple(f) for f in firings]).incidents[incident_id].to_json()
        raise AssertionError(
            f"{problems}\nlive: {body}\nreplayed: {replayed}\nlog: {[tuple(r)[:3] for r in rows]}"
            f"\nfirings: {[tuple(f) for f in firings]}"
        )


async def test_a_backlog_read_after_a_restart_equals_simulate(
    kafka: Service, postgres: Service, policy_dir: Path
) -> None:
    p = f"bk-{uuid.uuid4().hex[:6]}-"
    seed = int(os.environ.get("EVENT_TIME_SEED", random.randrange(10**6)))
    print(f"seed {seed} (EVENT_TIME_SEED={seed} repeats this run)")
    settings = await new_settings(kafka, postgres, policy_dir, incidents_batch_max=7)
    events = backlog(p, random.Random(seed), datetime.now(UTC) - 4 * 60 * M, 40)
    await publish_events(kafka.url, events)  # the engine is down (a deploy): the events wait
    sim = view(simulated(events, datetime.now(UTC), policy_dir))
    service = EngineService(settings)
    async with OutputCollector(kafka.url, p) as out:
        await service.start()
        try:
            await settle(out, len(sim))
        finally:
            await service.stop()
    live = view(out.events)
    assert live == sim, differ(live, sim, events)
    met = [(v[0], v[2], v[3]) for v in live.values() if v[1] == p + "met" and v[0].startswith("incident.sla")]
    assert met == [("incident.sla.warning", "restore", 0.5)]  # what the SLA says: no breach, no failover
    assert not [v for v in live.values() if v[1] == p + "tie" and v[0] == "incident.sla.breached"]
    assert not [v for v in live.values() if v[0] in ("incident.sla.retracted", "incident.rejected")]
    await check_replay(settings)


async def test_an_engine_lagging_behind_a_live_stream_equals_simulate(
    kafka: Service, postgres: Service, policy_dir: Path
) -> None:
    """Incidents stream in on a policy of seconds, stamped as they are sent; the engine commits slowly
    with random pauses, so it falls seconds behind and catches up again."""
    p = f"lag-{uuid.uuid4().hex[:6]}-"
    seed = int(os.environ.get("EVENT_TIME_SEED", random.randrange(10**6)))
    print(f"seed {seed} (EVENT_TIME_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    settings = await new_settings(
        kafka, postgres, policy_dir, incidents_batch_max=3, incidents_breach_grace_ms=1000,
        incidents_default_policy="fast",
    )  # fmt: skip
    service = EngineService(settings)
    await service.start()
    slow_commits(service, rng, 0.6)
    # (delay after the start, event) — every ack/restore delay stays 400 ms or more away from the
    # thresholds (2, 3.2, 4, 6.4, 8 s), where a message in flight would make the outcome a race
    plan: list[tuple[float, str, str, dict[str, Any]]] = []
    for i in range(24):
        at = rng.uniform(0, 5)
        plan.append((at, f"{p}{i}", "reported", {"severity": "critical", "region": "uk"}))
        ack = rng.choice([1.0, 2.6, 3.6, 4.5, None])
        if ack is not None:
            plan.append((at + ack, f"{p}{i}", "acknowledged", {}))
        end = rng.choice([2.7, 5.0, 7.0, 9.5, None])
        if end is not None and (ack is None or end > ack):
            plan.append((at + end, f"{p}{i}", "restored", {}))
    plan.sort(key=lambda item: item[0])
    sent: list[dict[str, Any]] = []
    producer = AIOKafkaProducer(bootstrap_servers=kafka.url, enable_idempotence=True, acks="all")
    await producer.start()
    async with OutputCollector(kafka.url, p) as out:
        try:
            began = time.monotonic()
            for delay, incident, kind, data in plan:
                await asyncio.sleep(max(0.0, began + delay - time.monotonic()))
                body = event(kind, incident, datetime.now(UTC), **data)  # stamped as it is sent
                await producer.send_and_wait(TOPIC_EVENTS, orjson.dumps(body), key=incident.encode())
                sent.append(body)
            await asyncio.sleep(12)  # every clock of the last incident has run out
            sim = view(simulated(sent, datetime.now(UTC), policy_dir, "fast"))
            await settle(out, len(sim), quiet=5)
        finally:
            await producer.stop()
            await service.stop()
    live = view(out.events)
    assert live == sim, differ(live, sim, sent)
    assert any(v[0] == "incident.sla.breached" for v in live.values())
    assert any(v[0] == "incident.failover.required" for v in live.values())
    await check_replay(settings)


async def test_a_rebalance_in_the_middle_of_a_backlog_equals_simulate(
    kafka: Service, postgres: Service, policy_dir: Path
) -> None:
    p = f"rb-{uuid.uuid4().hex[:6]}-"
    seed = int(os.environ.get("EVENT_TIME_SEED", random.randrange(10**6)))
    print(f"seed {seed} (EVENT_TIME_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    settings = await new_settings(kafka, postgres, policy_dir, incidents_batch_max=5)
    events = backlog(p, rng, datetime.now(UTC) - 4 * 60 * M, 60)
    await publish_events(kafka.url, events)
    sim = view(simulated(events, datetime.now(UTC), policy_dir))
    first, second = EngineService(settings), EngineService(settings)
    async with OutputCollector(kafka.url, p) as out:
        await first.start()
        slow_commits(first, rng, 0.3)
        try:
            await out.wait_for(lambda: len(out.events) >= 20, 60, "the first outputs")
            second.telemetry = first.telemetry
            await second.start()  # the group rebalances: partitions move with half-read backlogs
            await settle(out, len(sim))
        finally:
            await second.stop()
            await first.stop()
    live = view(out.events)
    assert live == sim, differ(live, sim, events)
    await check_replay(settings)


async def test_evidence_in_flight_cancels_or_retracts_the_breach(
    kafka: Service, postgres: Service, policy_dir: Path
) -> None:
    """On the fast policy (ack due 4 s after the report) with a 2 s grace: an ack stamped at 3 s and
    read at 5 s (within the grace) sends nothing; one stamped at 3 s and read at 9 s retracts the
    breach sent at 6 s. `due_at` stays the true moment; the retraction names the breach and the ack."""
    p = f"fl-{uuid.uuid4().hex[:6]}-"
    settings = await new_settings(
        kafka, postgres, policy_dir, incidents_breach_grace_ms=2000, incidents_default_policy="fast"
    )
    service = EngineService(settings)
    await service.start()
    assert service.loop is not None
    await asyncio.wait_for(service.loop.ready.wait(), 30)
    t = datetime.now(UTC)
    within, after = p + "within", p + "after"
    async with OutputCollector(kafka.url, p) as out:
        try:
            await publish_events(kafka.url, [
                event("reported", within, t, severity="high", region="uk"),
                event("reported", after, t, severity="high", region="uk"),
            ])  # fmt: skip
            await asyncio.sleep(max(0.0, (t + 5 * S - datetime.now(UTC)).total_seconds()))
            in_time = event("acknowledged", within, t + 3 * S)
            await publish_events(kafka.url, [in_time])
            await out.wait_for(lambda: len(out.of("incident.sla.breached", after)) == 1, 15, "the breach")
            late = event("acknowledged", after, t + 3 * S)
            await publish_events(kafka.url, [late])
            await out.wait_for(lambda: len(out.of("incident.sla.retracted", after)) == 1, 15, "retraction")
            await asyncio.sleep(3)
        finally:
            await service.stop()
    assert out.of("incident.sla.breached", within) == []
    (breach,) = out.of("incident.sla.breached", after)
    (retraction,) = out.of("incident.sla.retracted", after)
    assert datetime.fromisoformat(breach["data"]["due_at"]) == t + 4 * S
    assert datetime.fromisoformat(breach["time"]) >= t + 6 * S  # held for the grace
    assert retraction["data"]["retracts"] == breach["id"]
    assert retraction["data"]["cause"] == late["id"]
    assert datetime.fromisoformat(retraction["data"]["stopped_at"]) == t + 3 * S
    await check_replay(settings)

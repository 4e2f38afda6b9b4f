"""Fault injection: crashes, broker and PostgreSQL restarts, rebalances, storms and fuzzed input.

Each case checks from the event log and the output topics that no accepted event was lost or applied
twice, every due breach was emitted once, no output id stands for two outputs, and every bad input
was dead-lettered with a reason. Sizes are small in `make test`; `make faults` sets FAULTS_SCALE=full.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.protocol.metadata import MetadataRequest

from devstack.kafka import KafkaCluster
from devstack.postgres import LocalPostgres
from devstack.stack import Service, _scratch, fresh_database
from incident_contracts import TOPIC_BREACHES, TOPIC_EVENTS, TOPIC_REJECTED, TOPIC_STATE
from incident_engine.entrypoints.commands import publish_events
from tests.faults.checks import (
    Engines,
    check_breaches,
    check_log,
    check_outputs,
    check_transitions,
    expected_breaches,
    logged,
    overdue,
    script,
    sized,
)
from tests.integration.engine_helpers import OutputCollector, ago, event, settings_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _chunks(events: list[dict[str, Any]], chunks: int) -> list[list[dict[str, Any]]]:
    """The events split in `chunks` pieces, in order (the caller publishes them between faults)."""
    size = max(1, -(-len(events) // chunks))
    return [events[i : i + size] for i in range(0, len(events), size)]


async def _finish(out: OutputCollector, incidents: int, timeout: float = 180) -> None:
    await out.wait_for(
        lambda: len(out.of("incident.state.changed", to="restored")) >= incidents, timeout, "every restore"
    )
    await out.wait_for(
        lambda: len(out.of("incident.failover.required")) >= overdue(incidents), 60, "failovers"
    )
    await asyncio.sleep(1.5)  # re-sends of the last outbox rows, if any


async def _check_script(dsn: str, out: OutputCollector, prefix: str, incidents: int,
                        events: list[dict[str, Any]], strict: bool = False) -> None:  # fmt: skip
    await check_log(dsn, prefix, events)
    check_outputs(out.events, strict=strict)
    check_breaches(out.events, expected_breaches(prefix, incidents))
    check_transitions(out.events, events)


async def test_repeated_sigkill_during_a_stream(kafka: Service, postgres: Service, tmp_path: Path) -> None:
    prefix = f"fk-{uuid.uuid4().hex[:5]}-"
    incidents, kills = sized(60, 600), sized(2, 6)
    dsn = await fresh_database(postgres.url)
    engines = Engines(settings_for(kafka.url, dsn), tmp_path)
    first, second = script(prefix, incidents)
    events = first + second
    chunks = _chunks(events, kills * 4)
    kill_at = set(random.sample(range(1, len(chunks)), kills))
    async with OutputCollector(kafka.url, prefix) as out:
        try:
            await engines.start()
            for n, chunk in enumerate(chunks):
                await publish_events(kafka.url, chunk)
                await asyncio.sleep(random.uniform(0.05, 0.4))
                if n in kill_at:
                    engines.kill()
                    await engines.start()
            await _finish(out, incidents)
        finally:
            engines.stop_all()
    await _check_script(dsn, out, prefix, incidents, events)


async def _replicated_topics(cluster: KafkaCluster, replicas: int) -> None:
    """Create the contract's topics replicated, and wait until every broker's metadata has them.

    A broker learns of new topics from the controller a moment later: a client that asked it meanwhile
    was told the topic does not exist (the output reader failed to start, now and then, on
    incidents.rejected)."""
    topics = (TOPIC_EVENTS, TOPIC_STATE, TOPIC_BREACHES, TOPIC_REJECTED)
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap_servers)
    await admin.start()
    try:
        for topic in topics:
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(
                    [NewTopic(topic, 6, replicas, topic_configs={"min.insync.replicas": "2"})]
                )
    finally:
        await admin.close()
    client = AIOKafkaClient(bootstrap_servers=cluster.bootstrap_servers)
    await client.bootstrap()
    try:
        deadline = asyncio.get_running_loop().time() + 60
        for node in cluster.nodes:
            while True:  # asked directly, each node answers from its own metadata
                answer = await client.send(node.node_id, MetadataRequest(list(topics), False))
                listed = {
                    t[1]: [p[2] for p in t[-1] if p[0] == 0] for t in answer.topics if t[0] == 0
                }  # topic -> leaders of the partitions it knows (error codes 0)
                if all(len(listed.get(topic, ())) == 6 and -1 not in listed[topic] for topic in topics):
                    break
                assert asyncio.get_running_loop().time() < deadline, (
                    f"node {node.node_id} never listed {topics}"
                )
                await asyncio.sleep(0.2)
    finally:
        await client.close()


async def test_broker_stop_start_in_a_three_broker_cluster(postgres: Service, tmp_path: Path) -> None:
    prefix = f"fb-{uuid.uuid4().hex[:5]}-"
    incidents = sized(60, 600)
    cluster = KafkaCluster.create(_scratch("kafka-3"), size=3)
    await asyncio.to_thread(cluster.start)
    try:
        bootstrap = cluster.bootstrap_servers
        await _replicated_topics(cluster, 3)  # before the engine, which would create them unreplicated
        dsn = await fresh_database(postgres.url)
        # The engine gets one bootstrap address (node 3, never stopped): FastStream's KafkaBroker takes
        # a comma-separated string as one host name. Metadata then gives it the whole cluster.
        engines = Engines(settings_for(f"127.0.0.1:{cluster.node(3).port}", dsn), tmp_path)
        first, second = script(prefix, incidents)
        events = first + second
        chunks = _chunks(events, 6)
        async with OutputCollector(bootstrap, prefix) as out:
            try:
                await engines.start()
                for n, chunk in enumerate(chunks):
                    await publish_events(bootstrap, chunk)
                    node = 1 + n // 2 % 2
                    if n % 2 == 0:  # one broker down at a time: every partition keeps 2 in-sync replicas
                        await asyncio.to_thread(cluster.stop_node, node, n % 4 == 2)
                    else:
                        await asyncio.sleep(1.0)
                        await asyncio.to_thread(cluster.start_node, node)
                await _finish(out, incidents, 240)
            finally:
                engines.stop_all()
        await _check_script(dsn, out, prefix, incidents, events)
    finally:
        await asyncio.to_thread(cluster.stop)


async def test_postgres_stop_and_kill_during_a_stream(kafka: Service, tmp_path: Path) -> None:
    prefix = f"fp-{uuid.uuid4().hex[:5]}-"
    incidents = sized(60, 600)
    pg = LocalPostgres.create(_scratch("pg-faults") / "data")
    await asyncio.to_thread(pg.start)
    try:
        engines = Engines(settings_for(kafka.url, pg.dsn), tmp_path)
        first, second = script(prefix, incidents)
        events = first + second
        chunks = _chunks(events, 6)
        async with OutputCollector(kafka.url, prefix) as out:
            try:
                await engines.start()
                for n, chunk in enumerate(chunks):
                    await publish_events(kafka.url, chunk)
                    await asyncio.sleep(0.3)
                    if n in (1, 3):  # a clean fast shutdown, then a crash (recovery from the WAL)
                        await asyncio.to_thread(pg.stop if n == 1 else pg.kill)
                        await asyncio.sleep(2.0)
                        await asyncio.to_thread(pg.start)
                await _finish(out, incidents, 240)
            finally:
                engines.stop_all()
        await _check_script(pg.dsn, out, prefix, incidents, events)
    finally:
        await asyncio.to_thread(pg.stop)


async def test_three_engines_one_killed_rebalances(kafka: Service, postgres: Service, tmp_path: Path) -> None:
    prefix = f"f3-{uuid.uuid4().hex[:5]}-"
    incidents = sized(60, 600)
    dsn = await fresh_database(postgres.url)
    engines = Engines(settings_for(kafka.url, dsn), tmp_path)
    # Reported 14m48s ago: the ack breaches come due ~12 s from now, after one engine is gone.
    due = ago(minutes=14, seconds=48)
    soon = [event("reported", f"{prefix}s{i:04d}", due, severity="critical", region="uk")
            for i in range(sized(30, 300))]  # fmt: skip
    first, second = script(prefix, incidents)
    async with OutputCollector(kafka.url, prefix) as out:
        try:
            await engines.start(3)
            async with httpx.AsyncClient() as client:
                for _ in range(150):  # all three joined: the 6 partitions are split between them
                    parts = [(await client.get(f"http://127.0.0.1:{p}/readyz")).json() for p in engines.ports]
                    if all(x.get("partitions") for x in parts):
                        break
                    await asyncio.sleep(0.3)
            assert sorted(p for x in parts for p in x["partitions"]) == list(range(6))
            await publish_events(kafka.url, soon + first[: len(first) // 2])
            await out.wait_for(lambda: len(out.of("incident.state.changed", to="reported")) >= len(soon), 60)
            engines.kill(random.randrange(3))
            await publish_events(kafka.url, first[len(first) // 2 :] + second)
            await _finish(out, incidents)
            await out.wait_for(
                lambda: len({o["subject"] for o in out.of("incident.sla.breached", clock="ack")
                             if o["subject"].startswith(prefix + "s")}) == len(soon),
                90, "the ack breaches of the soon-due incidents, the killed engine's partitions too",
            )  # fmt: skip
            await asyncio.sleep(1.5)
        finally:
            engines.stop_all()
    events = soon + first + second
    await check_log(dsn, prefix, events)
    check_outputs(out.events)
    soon_due = {(e["subject"], "incident.sla.breached", "ack") for e in soon}
    check_breaches(out.events, expected_breaches(prefix, incidents) | soon_due)
    check_transitions(out.events, events)


async def test_storm_of_events_on_one_incident(kafka: Service, postgres: Service, tmp_path: Path) -> None:
    prefix = f"fs-{uuid.uuid4().hex[:5]}-"
    incident = f"{prefix}storm"
    total = sized(2_000, 100_000)
    dsn = await fresh_database(postgres.url)
    engines = Engines(settings_for(kafka.url, dsn), tmp_path)
    accepted = [event("reported", incident, severity="low", region="uk"), event("acknowledged", incident)]
    storm: list[dict[str, Any]] = list(accepted)
    repeats = duplicates = 0
    while len(storm) < total:
        n = len(storm)
        if n % 97 == 0:  # the same event again (a producer retry): dropped silently
            storm.append(accepted[-1])
            repeats += 1
        elif n % 101 == 0:  # reported again from another channel: dead-lettered as a duplicate
            storm.append(event("reported", incident, severity="low", region="uk"))
            duplicates += 1
        else:
            accepted.append(event("updated", incident, note=f"update {n}"))
            storm.append(accepted[-1])
    async with OutputCollector(kafka.url, prefix) as out:
        try:
            await engines.start()
            await publish_events(kafka.url, storm)
            await out.wait_for(
                lambda: len(out.of("incident.rejected")) >= duplicates, sized(120, 900), "duplicates"
            )
            deadline = asyncio.get_running_loop().time() + sized(120, 900)
            while asyncio.get_running_loop().time() < deadline:  # the last events are committed
                if len(await logged(dsn, prefix)) >= len(accepted):
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(1.5)
        finally:
            engines.stop_all()
    await check_log(dsn, prefix, accepted)
    check_outputs(out.events, strict=True)
    rejected = out.of("incident.rejected")
    assert len(rejected) == duplicates and all(r["data"]["reason"] == "duplicate" for r in rejected)
    assert len(out.of("incident.state.changed")) == 2  # reported, acknowledged

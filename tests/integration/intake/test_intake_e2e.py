"""The intake end to end: the real Alertmanager and PagerDuty Events v2 calls → intake → Kafka → engine.

Real Kafka, PostgreSQL, engine process, intake process (`incidents intake`) and Prometheus
Alertmanager v0.35.0 built from its Go module.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from devstack.stack import Service, fresh_database
from tests.integration.engine_helpers import (
    OutputCollector,
    engine_process,
    settings_for,
    start_at_end,
    wait_ready,
)
from tests.integration.intake.helpers import (
    EventsReader,
    ensure_events_topic,
    spawn_alertmanager,
    spawn_intake,
    stop,
    wait_http,
)

pytestmark = pytest.mark.integration

TOKEN = "am-" + uuid.uuid4().hex
ROUTING_KEY = uuid.uuid4().hex


@dataclass
class Stack:
    kafka: str
    intake: str
    am_name: str
    pd_name: str
    home: Path


@pytest.fixture(scope="module")
async def stack(
    kafka: Service, postgres: Service, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """An engine and an intake sharing one fresh database (each its own tables) on the session's Kafka."""
    home = tmp_path_factory.mktemp("intake")
    dsn = await fresh_database(postgres.url)
    await ensure_events_topic(kafka.url)
    settings = settings_for(kafka.url, dsn)
    await start_at_end(kafka.url, dsn, settings.incidents_consumer_group)
    engine, engine_port = engine_process(settings, home / "engine.log")
    suffix = uuid.uuid4().hex[:6]
    am_name, pd_name = f"am{suffix}", f"pd{suffix}"
    integrations = home / "integrations.yaml"
    integrations.write_text(
        "integrations:\n"
        f"  {am_name}:\n"
        "    kind: alertmanager\n"
        "    region: {label: region, default: au}\n"
        "    policy: livepro-1\n"
        "    auth: {bearer_token: '${TEST_AM_TOKEN}'}\n"
        f"  {pd_name}:\n"
        "    kind: pagerduty\n"
        "    region: uk\n"
        "    routing_key: {file: routing_key.txt}\n"
    )
    (home / "routing_key.txt").write_text(ROUTING_KEY + "\n")
    intake, port = spawn_intake(kafka.url, dsn, integrations, home / "intake.log", TEST_AM_TOKEN=TOKEN)
    try:
        await wait_ready(engine_port, engine)
        await wait_http(f"http://127.0.0.1:{port}/readyz", intake, home / "intake.log")
        yield Stack(kafka.url, f"http://127.0.0.1:{port}", am_name, pd_name, home)
    finally:
        stop(intake)
        stop(engine)


async def test_real_alertmanager_reports_once_and_restores(stack: Stack, alertmanager_binary: Path) -> None:
    url = f"{stack.intake}/v1/alertmanager/{stack.am_name}"
    am, am_port = spawn_alertmanager(alertmanager_binary, stack.home / "am", url, TOKEN)
    api = f"http://127.0.0.1:{am_port}/api/v2"
    alert = {
        "labels": {"alertname": f"DiskFull{uuid.uuid4().hex[:6]}", "severity": "critical", "region": "us"},
        "annotations": {"summary": "disk full on db-1", "description": "99% used"},
        "startsAt": datetime.now(UTC).isoformat(),
        "endsAt": (datetime.now(UTC) + timedelta(minutes=10)).isoformat(),
    }
    source = f"/channels/monitor/alertmanager/{stack.am_name}"
    try:
        async with (
            EventsReader(stack.kafka, lambda e: e["source"] == source) as events,
            OutputCollector(stack.kafka, f"{stack.am_name}-") as outputs,
            httpx.AsyncClient() as client,
        ):
            await wait_http(f"http://127.0.0.1:{am_port}/-/ready", am, stack.home / "am" / "alertmanager.log")
            assert (await client.post(f"{api}/alerts", json=[alert])).status_code == 200
            await events.wait_for(lambda: len(events.of("incident.reported")) == 1, "incident.reported")
            (reported,) = events.of("incident.reported")
            incident = reported["subject"]
            assert reported["_key"] == incident
            expected = {
                "severity": "critical",
                "region": "us",
                "summary": "disk full on db-1",
                "policy": "livepro-1",
            }
            assert reported["data"] == expected
            assert reported["_headers"]["traceparent"].startswith("00-")  # the trace starts at the intake
            await outputs.wait_for(
                lambda: bool(outputs.of("incident.state.changed", incident, to="reported")),
                what="the engine's incident.state.changed to reported",
            )

            # re-fire: the same alert again, and Alertmanager's repeat_interval (2 s) re-sends the group
            assert (await client.post(f"{api}/alerts", json=[alert])).status_code == 200
            before = await _accepted(client, stack, stack.am_name)
            await asyncio.sleep(5)
            assert await _accepted(client, stack, stack.am_name) > before  # the re-sends did arrive
            assert len(events.of("incident.reported")) == 1
            assert [e["type"] for e in events.events] == ["incident.reported"]
            assert len(outputs.of("incident.state.changed", to="reported")) == 1

            # a second alert joins the group: the same incident, updated
            second = {**alert, "labels": {**alert["labels"], "instance": "db-2"}}
            assert (await client.post(f"{api}/alerts", json=[alert, second])).status_code == 200
            await events.wait_for(lambda: bool(events.of("incident.updated")), "incident.updated")
            (updated,) = events.of("incident.updated")
            assert updated["subject"] == incident and "2 alert(s) firing" in updated["data"]["note"]

            # resolve: an endsAt in the past resolves the alerts, so the group
            now = datetime.now(UTC).isoformat()
            resolved = [{**alert, "endsAt": now}, {**second, "endsAt": now}]
            assert (await client.post(f"{api}/alerts", json=resolved)).status_code == 200
            await events.wait_for(lambda: bool(events.of("incident.restored")), "incident.restored")
            (restored,) = events.of("incident.restored")
            assert restored["subject"] == incident
            await outputs.wait_for(
                lambda: bool(outputs.of("incident.state.changed", incident, to="restored")),
                what="the engine's incident.state.changed to restored",
            )
            await asyncio.sleep(3)  # resolved notifications re-sent by repeat_interval add nothing
            assert [e["type"] for e in events.events] == [
                "incident.reported",
                "incident.updated",
                "incident.restored",
            ]
    finally:
        stop(am)


async def _accepted(client: httpx.AsyncClient, stack: Stack, integration: str) -> float:
    text = (await client.get(f"{stack.intake}/metrics")).text
    line = f'intake_requests_total{{integration="{integration}",outcome="accepted"}} '
    return sum(float(row.split()[-1]) for row in text.splitlines() if row.startswith(line))


async def test_pagerduty_trigger_acknowledge_resolve_reach_the_engine(stack: Stack) -> None:
    source = f"/channels/monitor/pagerduty/{stack.pd_name}"
    dedup = f"db-{uuid.uuid4().hex[:8]}"
    trigger = {
        "routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": dedup,
        "payload": {"summary": "api latency high", "source": "api-1", "severity": "critical"},
    }  # fmt: skip
    async with (
        EventsReader(stack.kafka, lambda e: e["source"] == source) as events,
        OutputCollector(stack.kafka, f"{stack.pd_name}-") as outputs,
        httpx.AsyncClient(base_url=stack.intake) as client,
    ):
        for _ in range(2):  # a sender's retry of the trigger: the same alert
            answer = await client.post("/v2/enqueue", json=trigger)
            assert answer.status_code == 202
            assert answer.json() == {"status": "success", "message": "Event processed", "dedup_key": dedup}
        for action in ("acknowledge", "resolve"):
            body = {"routing_key": ROUTING_KEY, "event_action": action, "dedup_key": dedup}
            assert (await client.post("/v2/enqueue", json=body)).status_code == 202
        await events.wait_for(lambda: len(events.events) == 3, "three events")
        assert [e["type"] for e in events.events] == [
            "incident.reported", "incident.acknowledged", "incident.restored",
        ]  # fmt: skip
        incident = events.events[0]["subject"]
        assert {e["subject"] for e in events.events} == {incident}
        await outputs.wait_for(
            lambda: (
                [e["data"]["to"] for e in outputs.of("incident.state.changed", incident)]
                == ["reported", "acknowledged", "restored"]
            ),
            what="reported → acknowledged → restored",
        )


async def test_bad_requests_to_the_running_intake_are_json_4xx(stack: Stack) -> None:
    am = f"/v1/alertmanager/{stack.am_name}"
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=stack.intake) as client:
        cases = [
            (
                await client.post(am, json={"status": "firing"}, headers={"Authorization": "Bearer wrong"}),
                401,
            ),
            (await client.post(am, content=b"{oops", headers=bearer), 400),
            (await client.post(am, content=b"[" * (600 * 1024), headers=bearer), 413),
            (await client.post("/v1/alertmanager/nobody", json={}, headers=bearer), 404),
            (await client.post("/v2/enqueue", json={"routing_key": "nope", "event_action": "resolve"}), 400),
        ]
        for answer, status in cases:
            assert answer.status_code == status, answer.text
            assert answer.headers["content-type"] == "application/json"
            assert answer.json()
        ready = await client.get("/readyz")
        assert ready.json() == {"ready": True, "postgres": "ok", "kafka": "ok"}

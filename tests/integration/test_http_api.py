"""HTTP of the engine after a scripted run: /metrics counts, probes, and the token-protected read API."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from devstack.stack import Service, fresh_database
from incident_engine.adapters.postgres.migrate import migrate
from incident_engine.adapters.postgres.store import create_pool
from incident_engine.adapters.telemetry import create_telemetry
from incident_engine.config import Settings
from incident_engine.entrypoints.app import EngineService
from incident_engine.entrypoints.commands import publish_events
from incident_engine.entrypoints.http import create_http_app
from tests.integration.engine_helpers import OutputCollector, ago, event, settings_for, start_at_end

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token"


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (labels matched as given, others ignored)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(
        f"no sample {name}{labels} in:\n" + "\n".join(row for row in text.splitlines() if name in row)
    )


async def test_metrics_probes_and_read_api(kafka: Service, postgres: Service) -> None:
    telemetry = create_telemetry("incident-sla-engine-test", span_exporters=[])
    settings = settings_for(kafka.url, await fresh_database(postgres.url), incidents_api_token=TOKEN)
    # counts must be exact: start after everything earlier tests published to the shared topic
    await start_at_end(kafka.url, settings.database_url.get_secret_value(), settings.incidents_consumer_group)
    service = EngineService(settings, telemetry=telemetry)
    app = create_http_app(service)
    p = f"http-{uuid.uuid4().hex[:6]}-"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://engine") as client:
        assert (await client.get("/readyz")).status_code == 503  # not started: not ready
        await service.start()
        try:
            await asyncio.wait_for(service.loop.ready.wait(), 30)  # type: ignore[union-attr]
            for _ in range(40):  # Kafka counts as reachable once the background probe has answered
                ready = (await client.get("/readyz")).json()
                if ready["ready"]:
                    break
                await asyncio.sleep(0.25)
            assert ready["ready"] is True and ready["postgres"] is True and ready["kafka"] is True
            async with OutputCollector(kafka.url, p) as out:
                await publish_events(kafka.url, [
                    event("reported", p + "a", ago(minutes=14, seconds=58), severity="critical", region="us"),
                    event("reported", p + "b", severity="low", region="uk"),
                    event("acknowledged", p + "b"),
                    event("acknowledged", p + "b"),  # duplicate
                    event("restored", p + "nobody"),  # unknown incident
                ])  # fmt: skip
                await out.wait_for(lambda: out.of("incident.sla.breached", p + "a", clock="ack") != [], 20)
            metrics = (await client.get("/metrics")).text
            assert (
                sample(metrics, "incidents_events_total", type="incident.reported", outcome="accepted") == 2
            )
            assert (
                sample(metrics, "incidents_events_total", type="incident.acknowledged", outcome="accepted")
                == 1
            )
            assert sample(metrics, "incidents_rejections_total", reason="duplicate") == 1
            assert sample(metrics, "incidents_rejections_total", reason="unknown_incident") == 1
            assert (
                sample(
                    metrics, "incidents_sla_outputs_total", kind="breached", clock="ack", severity="critical"
                )
                == 1
            )
            # every SLA output fires from the timer heap: the ack warnings that were overdue when the
            # report was read (late by minutes), then the ack breach and the restore 50 % warning,
            # which came due together while the engine was watching (late by less than a second
            # against the moment each may fire: the due moment, plus the grace for the breach)
            assert sample(metrics, "incidents_timer_lateness_seconds_count") == 4
            assert sample(metrics, "incidents_timer_lateness_seconds_bucket", le="1.0") == 2
            assert sample(metrics, "incidents_timers_armed") >= 1
            assert sample(metrics, "incidents_outbox_backlog") >= 0
            assert service.loop is not None
            owned = sorted(service.loop.assigned)
            lags: list[float] = []
            for _ in range(60):  # lag and backlog are sampled in the background every few seconds
                text = (await client.get("/metrics")).text
                if all(f'incidents_consumer_lag{{partition="{n}"}}' in text for n in owned):
                    lags = [sample(text, "incidents_consumer_lag", partition=str(n)) for n in owned]
                    if not any(lags):
                        break
                await asyncio.sleep(0.25)
            shown = [row for row in text.splitlines() if row.startswith("incidents_consumer_lag")]
            assert lags == [0.0] * len(owned), (
                f"the engine caught up, so the lag must come down to 0: {shown}"
            )

            assert (await client.get(f"/incidents/{p}a")).status_code == 401
            wrong = await client.get(f"/incidents/{p}a", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
            auth = {"Authorization": f"Bearer {TOKEN}"}
            body = (await client.get(f"/incidents/{p}b", headers=auth)).json()
            assert body["state"] == "acknowledged" and body["policy"] == "livepro-1"
            assert [t["type"] for t in body["timeline"]] == ["incident.reported", "incident.acknowledged"]
            assert (
                body["clocks"]["ack"]["status"] == "met" and body["clocks"]["update"]["status"] == "running"
            )
            assert re.match(r"\d{4}-\d\d-\d\dT", body["clocks"]["update"]["due_at"])
            update = body["clocks"]["update"]
            assert update["remaining_seconds"] > 0
            # 12 business hours from the ack; in business time never more than the budget
            assert 0 < update["remaining_business_seconds"] <= 12 * 3600
            assert (await client.get(f"/incidents/{p}zzz", headers=auth)).status_code == 404
            listed = (await client.get("/incidents?severity=critical", headers=auth)).json()["incidents"]
            assert [i["incident_id"] for i in listed] == [p + "a"]
            assert (await client.get("/healthz")).json() == {"status": "ok"}
        finally:
            await service.stop()
            telemetry.shutdown()


@pytest.fixture
async def seeded_pool(postgres: Service) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a database holding a recorded month of incidents (projections included)."""
    from incident_engine.domain import PolicyRegistry, SlaDomain
    from incident_engine.reporting.seed import record_history, write_log, write_projections
    from tests.integration.test_replay_report import _history

    dsn = await fresh_database(postgres.url)
    await migrate(dsn)
    log = record_history(SlaDomain(PolicyRegistry.load()), _history(), datetime(2025, 3, 20, tzinfo=UTC))
    await write_log(dsn, log)
    await write_projections(dsn, log)
    pool = await create_pool(dsn)
    yield pool
    await pool.close()


def _read_api(pool: asyncpg.Pool, **settings: Any) -> httpx.AsyncClient:
    """A client of the HTTP app over an engine that is not started: only its pool answers."""
    service = EngineService(Settings(**settings))
    service.pool = pool
    transport = httpx.ASGITransport(app=create_http_app(service))
    return httpx.AsyncClient(transport=transport, base_url="http://engine")


async def test_read_api_is_closed_without_a_token(seeded_pool: asyncpg.Pool) -> None:
    async with _read_api(seeded_pool) as client:
        for path in ("/incidents", "/incidents/C1"):
            denied = await client.get(path)
            assert denied.status_code == 401 and denied.headers["www-authenticate"] == "Bearer"
            error = denied.json()["error"]
            assert "INCIDENTS_API_TOKEN" in error and "INCIDENTS_API_OPEN=true" in error
        assert (await client.get("/healthz")).status_code == 200  # probes and metrics stay open
        assert (await client.get("/metrics")).status_code == 200
    async with _read_api(seeded_pool, incidents_api_token=TOKEN) as client:
        assert (await client.get("/incidents", headers={"Authorization": "Bearer nope"})).status_code == 401
        assert (await client.get("/incidents", headers={"Authorization": TOKEN})).status_code == 401
        ok = await client.get("/incidents", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200


async def test_read_api_opened_on_purpose_pages_incidents_and_timelines(seeded_pool: asyncpg.Pool) -> None:
    async with _read_api(seeded_pool, incidents_api_open=True) as client:
        everything = await client.get("/incidents")
        assert everything.status_code == 200 and everything.json()["next"] is None
        expected = [i["incident_id"] for i in everything.json()["incidents"]]
        assert len(expected) == 9
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            params = {"limit": "2", **({"after": cursor} if cursor else {})}
            page = (await client.get("/incidents", params=params)).json()
            seen += [i["incident_id"] for i in page["incidents"]]
            pages += 1
            cursor = page["next"]
            if cursor is None:
                break
        assert seen == expected and pages == 5  # every incident once, most recently reported first
        reported = [i["reported_at"] for i in everything.json()["incidents"]]
        assert reported == sorted(reported, reverse=True)
        restored = (await client.get("/incidents", params={"state": "restored", "limit": "1"})).json()
        assert len(restored["incidents"]) == 1 and restored["next"] is not None
        assert (await client.get("/incidents", params={"after": "garbage"})).status_code == 400

        first = (await client.get("/incidents/C2", params={"timeline_limit": "3"})).json()
        assert [t["seq"] for t in first["timeline"]] == [1, 2, 3] and first["timeline_next"] == 3
        rest = (await client.get("/incidents/C2", params={"timeline_after": "3"})).json()
        assert [t["seq"] for t in rest["timeline"]] == [4] and rest["timeline_next"] is None
        assert rest["state"] == "restored"
        bad = await client.get("/incidents/C2", params={"timeline_limit": "0"})
        assert bad.status_code == 400 and "timeline_limit" in bad.json()["error"]

"""GET /incidents filters (region, severity, policy, breached), its keyset cursor, and 400 on bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from devstack.stack import Service
from incident_engine.adapters.postgres.store import create_pool
from incident_engine.config import Settings
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.entrypoints.app import EngineService
from incident_engine.entrypoints.http import create_http_app
from incident_engine.reporting.seed import seeded_database, write_projections

pytestmark = pytest.mark.integration

STEPS = [  # (incident, event, UTC time, severity, region, policy)
    ("AU1", "reported", "2025-03-03T10:00", "critical", "au", None),  # never acknowledged: ack breached
    ("US2", "reported", "2025-03-03T14:00", "high", "us", "livepro-2"),  # 09:00 New York
    ("US2", "acknowledged", "2025-03-03T14:05", None, None, None),  # in time
    ("US2", "restored", "2025-03-03T14:20", None, None, None),  # in time (livepro-2: restore 30 min)
    ("UK3", "reported", "2025-03-03T10:00", "low", "uk", None),
    ("UK3", "acknowledged", "2025-03-03T10:10", None, None, None),
    ("UK3", "restored", "2025-03-03T10:30", None, None, None),  # nothing breached
    ("UK4", "reported", "2025-03-04T10:00", "critical", "uk", None),
    ("UK4", "acknowledged", "2025-03-04T10:20", None, None, None),  # ack 20 min: breached
    ("UK4", "restored", "2025-03-04T10:25", None, None, None),
    ("AU5", "reported", "2025-03-04T23:00", "low", "au", None),  # 10:00 Sydney
    ("AU5", "acknowledged", "2025-03-04T23:10", None, None, None),
]
ALL = {"AU1", "US2", "UK3", "UK4", "AU5"}


def _events() -> list[dict[str, Any]]:
    events = []
    for number, (incident, kind, at, severity, region, policy) in enumerate(STEPS):
        data: dict[str, Any] = {}
        if kind == "reported":
            data = {"severity": severity, "region": region, "summary": "checkout errors"}
            if policy:
                data["policy"] = policy
        events.append({
            "specversion": "1.0", "id": f"flt-{number}", "source": "/channels/test",
            "type": f"incident.{kind}", "subject": incident, "data": data,
            "time": datetime.fromisoformat(at).replace(tzinfo=UTC),
        })  # fmt: skip
    return events


@pytest.fixture(scope="module")
async def pool(postgres: Service) -> AsyncIterator[asyncpg.Pool]:
    """A database holding the projections of STEPS as of 2025-03-05 (one pool for the module)."""
    domain = SlaDomain(PolicyRegistry.load())
    dsn, log = await seeded_database(postgres.url, domain, _events(), datetime(2025, 3, 5, tzinfo=UTC))
    await write_projections(dsn, log)
    pool = await create_pool(dsn)
    yield pool
    await pool.close()


def _client(pool: asyncpg.Pool) -> httpx.AsyncClient:
    service = EngineService(Settings(incidents_api_open=True))
    service.pool = pool
    transport = httpx.ASGITransport(app=create_http_app(service))
    return httpx.AsyncClient(transport=transport, base_url="http://engine")


async def _ids(client: httpx.AsyncClient, **params: str) -> set[str]:
    answer = await client.get("/incidents", params=params)
    assert answer.status_code == 200, answer.text
    return {i["incident_id"] for i in answer.json()["incidents"]}


async def test_each_filter_and_their_combination(pool: asyncpg.Pool) -> None:
    async with _client(pool) as client:
        assert await _ids(client) == ALL
        assert await _ids(client, region="au") == {"AU1", "AU5"}
        assert await _ids(client, region="uk") == {"UK3", "UK4"}
        assert await _ids(client, severity="critical") == {"AU1", "UK4"}
        assert await _ids(client, policy="livepro-2") == {"US2"}
        assert await _ids(client, policy="livepro-1") == ALL - {"US2"}
        assert await _ids(client, breached="true") == {"AU1", "UK4"}
        assert await _ids(client, breached="false") == ALL - {"AU1", "UK4"}
        assert await _ids(client, state="restored") == {"US2", "UK3", "UK4"}
        assert await _ids(client, region="uk", breached="true", state="restored") == {"UK4"}
        assert await _ids(client, region="au", severity="high") == set()
        listed = (await client.get("/incidents", params={"region": "us"})).json()["incidents"]
        assert listed[0]["policy"] == "livepro-2" and listed[0]["severity"] == "high"


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"state": "resolved"}, ["state", "'resolved'", "restored"]),
        ({"severity": "urgent"}, ["severity", "critical"]),
        ({"region": "fr"}, ["region", "au, us, uk"]),
        ({"policy": "livepro-9"}, ["policy", "livepro-1"]),
        ({"breached": "yes"}, ["breached", "true or false"]),
        ({"limit": "0"}, ["limit", "between 1 and 1000"]),
        ({"limit": "5000"}, ["limit", "between 1 and 1000"]),
        ({"limit": "ten"}, ["limit", "whole number"]),
        ({"after": "garbage"}, ["after", "next"]),
        ({"sate": "reported"}, ["unknown parameter", "'sate'", "state"]),
    ],
)
async def test_a_bad_filter_is_a_400_that_says_what_is_allowed(
    pool: asyncpg.Pool, params: dict[str, str], words: list[str]
) -> None:
    async with _client(pool) as client:
        answer = await client.get("/incidents", params=params)
    assert answer.status_code == 400 and answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert all(word in error for word in words), error


async def test_cursor_pages_filtered_results_and_is_stable_under_inserts(pool: asyncpg.Pool) -> None:
    async with _client(pool) as client:
        first = (await client.get("/incidents", params={"breached": "false", "limit": "2"})).json()
        assert len(first["incidents"]) == 2 and isinstance(first["next"], str)
        # an incident reported meanwhile sorts first: it neither shifts nor repeats the next pages
        await pool.execute(
            "INSERT INTO incidents (incident_id, state, policy, severity, region, seq, kafka_partition,"
            " reported_at, updated_at, body) SELECT 'NEW', state, policy, severity, region, seq,"
            " kafka_partition, now(), now(), body FROM incidents WHERE incident_id = 'UK3'"
        )
        try:
            second = (
                await client.get(
                    "/incidents", params={"breached": "false", "limit": "2", "after": first["next"]}
                )
            ).json()
            assert second["next"] is None
            seen = [i["incident_id"] for i in first["incidents"] + second["incidents"]]
            assert sorted(seen) == sorted(ALL - {"AU1", "UK4"})  # each once, the new one not among them
            assert "NEW" in await _ids(client, breached="false")
        finally:
            await pool.execute("DELETE FROM incidents WHERE incident_id = 'NEW'")


async def test_an_incident_changed_while_paging_is_neither_skipped_nor_repeated(pool: asyncpg.Pool) -> None:
    """Pages are ordered by report, which never changes: an update during the walk moves nothing."""
    async with _client(pool) as client:
        first = (await client.get("/incidents", params={"limit": "2"})).json()
        shown = [i["incident_id"] for i in first["incidents"]]
        everyone = [i["incident_id"] for i in (await client.get("/incidents")).json()["incidents"]]
        later = [i for i in everyone if i not in shown]
        # the last incident of the walk changes now (an acknowledgement): it must still come
        await pool.execute("UPDATE incidents SET updated_at = now() WHERE incident_id = $1", later[-1])
        seen = list(shown)
        after = first["next"]
        while after is not None:
            page = (await client.get("/incidents", params={"limit": "2", "after": after})).json()
            seen += [i["incident_id"] for i in page["incidents"]]
            after = page["next"]
        assert sorted(seen) == sorted(ALL) and len(seen) == len(ALL)


async def test_a_retired_policy_still_filters(pool: asyncpg.Pool) -> None:
    """Incidents stay pinned to a policy removed from the folder: filtering by it is not an error."""
    await pool.execute("UPDATE incidents SET policy = 'livepro-0' WHERE incident_id = 'AU5'")
    try:
        async with _client(pool) as client:
            assert await _ids(client, policy="livepro-0") == {"AU5"}
    finally:
        await pool.execute("UPDATE incidents SET policy = 'livepro-1' WHERE incident_id = 'AU5'")

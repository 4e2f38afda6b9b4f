"""The console's pages, sign-in, CSRF and escaping against an in-memory backend (no sockets)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from incident_console import (
    ClockView,
    ConsoleConfig,
    IncidentDetail,
    IncidentSummary,
    TimelineEntry,
    console_app,
)
from incident_console.auth import Access
from incident_console.view import bar, duration
from incident_contracts import TOPIC_REJECTED
from incident_engine.domain import PolicyRegistry
from incident_engine.domain.model import ClockState
from incident_engine.entrypoints.console_backend import allowed_actions, clock_view

pytestmark = pytest.mark.unit
TOKEN = "unit-token-1234"
NOW = datetime(2026, 11, 30, 3, 0, tzinfo=UTC)  # Monday 14:00 in Sydney, Sunday 22:00 in New York


def clock(fraction: float, *, budget: float = 900.0, open_now: bool = True, **extra: Any) -> ClockView:
    started = NOW - timedelta(seconds=fraction * budget)
    fields: dict[str, Any] = {
        "name": "ack", "status": "running", "cycle": 1, "started_at": started,
        "due_at": started + timedelta(seconds=budget), "stopped_at": None, "budget_seconds": budget,
        "elapsed_seconds": fraction * budget, "open_now": open_now, "resumes_at": None,
        "zone": "Australia/Sydney",
    }  # fmt: skip
    fields.update(extra)
    return ClockView(**fields)


class MemoryBackend:
    """The console's backend in memory: incidents by id, published events in a list."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.incidents: dict[str, IncidentDetail] = {}

    def add(self, incident_id: str, state: str = "reported", summary: str = "Payments down") -> None:
        summary_row = IncidentSummary(
            id=incident_id, state=state, severity="critical", region="au", policy="livepro-1",
            summary=summary,
            channel="/channels/phone/au", reported_at=NOW, updated_at=NOW, clocks=[clock(0.3)],
        )  # fmt: skip
        entry = TimelineEntry(
            NOW, "incident.reported", "/channels/phone/au", "e1", True, 1, "ab" * 16, summary
        )
        self.incidents[incident_id] = IncidentDetail(summary_row, [entry], [], [], allowed_actions(state))

    async def open_incidents(self, now: datetime) -> list[IncidentSummary]:
        return [d.incident for d in self.incidents.values() if d.incident.state != "restored"]

    async def incident(self, incident_id: str, now: datetime) -> IncidentDetail | None:
        return self.incidents.get(incident_id)

    def policies(self) -> list[str]:
        return ["livepro-1", "livepro-2"]

    async def publish(self, event: dict[str, Any]) -> None:
        self.published.append(event)


# The test hosts are named (console.test) and served over plain http, where the cookies would be
# `Secure` by default (and never sent back over http): as with INCIDENTS_CONSOLE_COOKIE_SECURE=false.
PLAIN_HTTP = Access(TOKEN, cookie_secure=False)


def client(
    backend: MemoryBackend, access: Access | None = None, base: str = "http://console.test"
) -> httpx.AsyncClient:
    console = console_app(
        backend, ConsoleConfig(access or PLAIN_HTTP, {}, "https://traces.test/t/{trace_id}")
    )
    app = Starlette(routes=[Mount("/console", console)])  # as the engine mounts it
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base + "/console")


async def sign_in(c: httpx.AsyncClient, user: str = "alice", token: str = TOKEN) -> httpx.Response:
    return await c.post(
        "/login", data={"user": user, "token": token}, headers={"Origin": "http://console.test"}
    )


def test_bars_turn_amber_at_half_red_at_four_fifths_and_say_how_long_ago_they_breached() -> None:
    assert [bar(clock(f), NOW)["level"] for f in (0.0, 0.49, 0.5, 0.79, 0.8, 0.99)] == [
        "ok", "ok", "amber", "amber", "red", "red",
    ]  # fmt: skip
    late = bar(clock(1.0 + 300 / 900), NOW)
    assert late["level"] == "breached" and late["label"] == "breached 5m 00s ago" and late["pct"] == 100
    assert bar(clock(0.5), NOW)["label"] == "7m 30s left"
    paused = bar(clock(0.2, budget=43200, open_now=False, resumes_at=NOW + timedelta(hours=10),
                       zone="America/New_York"), NOW)  # fmt: skip
    assert paused["rate"] == 0 and paused["state"] == "paused"
    assert paused["label"] == "9h 36m left · paused, resumes Mon 08:00 New York"
    assert duration(59) == "59s" and duration(3 * 86400 + 7200) == "3d 2h"


def test_a_business_clock_outside_business_hours_is_paused_until_the_next_opening() -> None:
    policy = PolicyRegistry.load().get("livepro-1")
    calendar = policy.calendar("high", "us")
    started = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)  # Friday 15:00 in New York
    state = ClockState(started, calendar.add(started, timedelta(hours=12)))
    view = clock_view("resolution", state, calendar, "America/New_York", NOW)  # Sunday 22:00 there
    assert not view.open_now and view.resumes_at == datetime(2026, 11, 30, 13, 0, tzinfo=UTC)  # Mon 08:00
    assert view.elapsed_seconds == 5 * 3600 and view.budget_seconds == 12 * 3600
    assert bar(view, NOW)["label"] == "7h 00m left · paused, resumes Mon 08:00 New York"
    always = policy.calendar("critical", "us")
    ack = ClockState(NOW, NOW + timedelta(minutes=15))
    critical = clock_view("ack", ack, always, "America/New_York", NOW + timedelta(minutes=5))
    assert critical.open_now and critical.resumes_at is None and critical.fraction == pytest.approx(1 / 3)


def test_the_lifecycle_decides_which_buttons_are_offered() -> None:
    assert allowed_actions("reported") == [
        "acknowledged",
        "investigating",
        "failed_over",
        "restored",
        "updated",
    ]
    assert allowed_actions("investigating") == ["failed_over", "restored", "updated"]
    assert allowed_actions("restored") == []


async def test_sign_in_sets_a_strict_http_only_cookie_and_refuses_a_wrong_token() -> None:
    backend = MemoryBackend()
    async with client(backend) as c:
        assert (await c.get("/")).headers["location"] == "/console/login"
        wrong = await sign_in(c, token="nope")
        assert (
            wrong.status_code == 401 and "Wrong token." in wrong.text and not wrong.headers.get("set-cookie")
        )
        ok = await sign_in(c)
        assert ok.status_code == 303 and TOKEN not in ok.headers["location"]
        cookies = ok.headers.get_list("set-cookie")
        assert len(cookies) == 2
        for cookie in cookies:
            assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
            assert "Secure" not in cookie  # plain http here
        board = await c.get("/")
        assert board.status_code == 200 and "signed in as <strong>alice</strong>" in board.text
        assert "default-src 'self'" in board.headers["content-security-policy"]
    async with client(backend, base="https://console.test") as c:
        ok = await c.post(
            "/login", data={"user": "a", "token": TOKEN}, headers={"Origin": "https://console.test"}
        )
        assert all("Secure" in cookie for cookie in ok.headers.get_list("set-cookie"))


async def test_a_closed_console_says_how_to_open_it_and_a_proxy_header_signs_in() -> None:
    async with client(MemoryBackend(), Access(None)) as c:
        assert "INCIDENTS_API_TOKEN" in (await c.get("/login")).text
        assert (await sign_in(c)).status_code == 401
    backend = MemoryBackend()
    async with client(backend, Access(None, user_header="X-Forwarded-User")) as c:
        assert (await c.get("/")).status_code == 303
        board = await c.get("/", headers={"X-Forwarded-User": "sre@example.com"})
        assert board.status_code == 200 and "sre@example.com" in board.text


async def test_every_value_is_escaped() -> None:
    backend = MemoryBackend()
    nasty = "<script>alert(1)</script>"
    backend.add('INC-"><b>x', summary=nasty)
    async with client(backend) as c:
        await sign_in(c)
        for page in (await c.get("/"), await c.get("/incident", params={"id": 'INC-"><b>x'})):
            assert page.status_code == 200
            assert nasty not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
            assert '"><b>x' not in page.text


async def test_actions_need_the_session_csrf_token_and_the_same_origin() -> None:
    backend = MemoryBackend()
    backend.add("INC-1")
    async with client(backend) as c:
        await sign_in(c)
        page = (await c.get("/incident", params={"id": "INC-1"})).text
        match = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
        assert match is not None
        csrf = match.group(1)
        form = {"id": "INC-1", "action": "acknowledged", "csrf": csrf}
        here, there = {"Origin": "http://console.test"}, {"Origin": "https://evil.test"}
        assert (
            await c.post("/incident/act", data={**form, "csrf": "0" * 64}, headers=here)
        ).status_code == 403
        assert (await c.post("/incident/act", data=form, headers=there)).status_code == 403
        assert (await c.post("/incident/act", data=form)).status_code == 403  # neither Origin nor Referer
        assert backend.published == []
        sent = await c.post("/incident/act", data=form, headers=here)
        assert sent.status_code == 303 and "sent=" in sent.headers["location"]
        (event,) = backend.published
        assert event["source"] == "/channels/console" and event["type"] == "incident.acknowledged"
        assert event["subject"] == "INC-1" and event["user"] == "alice" and event["data"] == {"by": "alice"}
        # not allowed in the state: refused, nothing published
        backend.add("INC-2", state="restored")
        refused = await c.post("/incident/act", data={**form, "id": "INC-2"}, headers=here)
        assert refused.status_code == 409 and "not possible in state restored" in refused.text
        note = await c.post("/incident/act", data={**form, "action": "updated"}, headers=here)
        assert note.status_code == 400 and "needs a text" in note.text
        assert len(backend.published) == 1
        # another session's CSRF token does not fit this one
        async with client(backend) as other:
            await sign_in(other, "bob")
            stolen = await other.post("/incident/act", data=form, headers=here)
            assert stolen.status_code == 403


async def test_the_incident_page_links_traces_and_offers_only_what_the_lifecycle_allows() -> None:
    backend = MemoryBackend()
    backend.add("INC-3", state="investigating")
    async with client(backend) as c:
        await sign_in(c)
        page = (await c.get("/incident", params={"id": "INC-3"})).text
        assert 'href="https://traces.test/t/' + "ab" * 16 + '"' in page
        offered = re.findall(r'name="action" value="(\w+)"', page)
        assert offered == ["failed_over", "restored", "updated"]
        assert (await c.get("/incident", params={"id": "nope"})).status_code == 404


async def test_an_action_the_engine_refused_shows_its_rejection() -> None:
    backend = MemoryBackend()
    backend.add("INC-4")
    console = console_app(backend, ConsoleConfig(PLAIN_HTTP, {}))
    app = Starlette(routes=[Mount("/console", console)])
    original = {"specversion": "1.0", "id": "ev-9", "source": "/channels/console",
                "type": "incident.acknowledged", "subject": "INC-4", "time": "2026-11-30T03:00:00Z",
                "user": "alice"}  # fmt: skip
    rejection = {"type": "incident.rejected", "subject": "INC-4", "time": "2026-11-30T03:00:01Z",
                 "data": {"reason": "duplicate", "detail": "already acknowledged",
                          "original": orjson.dumps(original).decode()}}  # fmt: skip
    console.state.hub.take(TOPIC_REJECTED, orjson.dumps(rejection))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console.test") as c:
        await c.post("/console/login", data={"user": "alice", "token": TOKEN})
        page = (await c.get("/console/incident", params={"id": "INC-4", "sent": "ev-9"})).text
        assert "Refused: your acknowledged was rejected (duplicate: already acknowledged)." in page
        assert 'class="rejected"' in page and "by alice" in page
        other = (await c.get("/console/incident", params={"id": "INC-4", "sent": "ev-other"})).text
        assert "Refused" not in other and "Sent. The engine applies it" in other


async def test_the_cookie_proves_the_token_without_holding_it_and_is_secure_unless_on_loopback() -> None:
    backend = MemoryBackend()
    for base, secure in (("http://console.test", True), ("https://console.test", True),
                         ("http://127.0.0.1:8080", False), ("http://localhost:8080", False),
                         ("http://LOCALHOST:8080", False), ("http://[::1]:8080", False)):  # fmt: skip
        async with client(backend, Access(TOKEN), base=base) as c:
            origin = base
            ok = await c.post("/login", data={"user": "a", "token": TOKEN}, headers={"Origin": origin})
            cookies = ok.headers.get_list("set-cookie")
            assert len(cookies) == 2 and all(("Secure" in cookie) is secure for cookie in cookies), base
            assert all(TOKEN not in cookie for cookie in cookies)
    async with client(backend) as c:
        await sign_in(c)
        assert (await c.get("/")).status_code == 200
        nonce_user = c.cookies["incidents_console_session"]
        c.cookies.set("incidents_console_session", nonce_user.rpartition(".")[0] + ".mallory")
        assert (await c.get("/")).status_code == 303  # the proof binds the user: no switching
        c.cookies.set("incidents_console_session", nonce_user)
        c.cookies.set("incidents_console", TOKEN)  # the raw token is no proof either
        assert (await c.get("/")).status_code == 303
    async with client(backend) as c:  # a session from before the token was rotated is void
        await sign_in(c)
        rotated = console_app(backend, ConsoleConfig(Access("rotated", cookie_secure=False), {}))
        app = Starlette(routes=[Mount("/console", rotated)])
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://console.test/console", cookies=c.cookies
        ) as after:
            assert (await after.get("/")).status_code == 303


async def test_an_oversized_sign_in_is_refused_before_it_is_read() -> None:
    async with client(MemoryBackend()) as c:
        huge = await c.post(
            "/login", content=b"user=a&token=" + b"x" * (65 * 1024),
            headers={"Origin": "http://console.test", "Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert huge.status_code == 413 and "too large" in huge.text

        async def endless() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
            for _ in range(100):
                yield b"x" * 1024

        streamed = await c.post(
            "/login", content=endless(),
            headers={"Origin": "http://console.test", "Content-Type": "application/x-www-form-urlencoded"},
        )  # fmt: skip
        assert streamed.status_code == 413

"""The SRE console in a real browser (Debian's chromium driven by Playwright) against the real engine,
Kafka and PostgreSQL: sign-in, the live board, acknowledging from the page, a breach, filters, the
incident page, escaping, and requests from elsewhere refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from playwright.async_api import Browser, Page, async_playwright, expect

from devstack.stack import Service, fresh_database
from incident_console.app import server_exiting
from incident_engine.config import Settings
from incident_engine.entrypoints.app import EngineService
from incident_engine.entrypoints.commands import build_event, publish_events
from incident_engine.entrypoints.http import create_http_app
from tests.integration.engine_helpers import ago, settings_for, start_at_end

pytestmark = pytest.mark.integration
TOKEN = "console-test-token-5b1f"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip
TRACE_UI = "http://traces.example/trace/{trace_id}"


@dataclass
class Console:
    """The engine under test, served by uvicorn on a port of its own; restartable."""

    settings: Settings
    port: int
    shots: Path
    prefix: str
    service: EngineService | None = None
    server: uvicorn.Server | None = None
    task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def kafka(self) -> str:
        return self.settings.kafka_bootstrap_servers

    async def start(self) -> None:
        """A new engine process's worth: service, HTTP app, uvicorn; returns once /readyz says ready."""
        self.service = EngineService(self.settings)
        app = create_http_app(self.service)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, lifespan="on")
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/readyz")).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise AssertionError("engine not ready in time")

    async def stop(self) -> None:
        """Stop as on SIGTERM: the event streams end, so uvicorn need not wait for them."""
        assert self.server is not None and self.task is not None
        server_exiting()
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 60)

    async def publish(self, event_type: str, incident: str, source: str | None = None, **data: Any) -> str:
        """Publish an input event as a channel would, in a trace of its own; return the trace id."""
        at = data.pop("at", None)
        source = source or f"/channels/phone/{data.get('region') or 'au'}"
        event = build_event(
            event_type, self.prefix + incident, source=source, time=at, severity=data.pop("severity", None),
            region=data.pop("region", None), summary=data.pop("summary", None), extra=data,
        )  # fmt: skip
        context = SpanContext(random.getrandbits(128), random.getrandbits(64), False, TraceFlags(1))
        with trace.use_span(NonRecordingSpan(context)):
            await publish_events(self.kafka, [event])
        return f"{context.trace_id:032x}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
async def console(
    kafka: Service, postgres: Service, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Console]:
    """One engine (with its console) for the whole module."""
    settings = settings_for(
        kafka.url, await fresh_database(postgres.url), incidents_api_token=TOKEN,
        incidents_breach_grace_ms=300, incidents_trace_ui_url=TRACE_UI,
    )  # fmt: skip
    await start_at_end(kafka.url, settings.database_url.get_secret_value(), settings.incidents_consumer_group)
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path_factory.mktemp("console-shots"))
    shots.mkdir(parents=True, exist_ok=True)
    engine = Console(settings, _free_port(), shots, f"INC-{uuid.uuid4().hex[:4]}-")
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """One headless chromium (the Debian package's binary) for the module."""
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def signed_in(browser: Browser, console: Console, user: str = "alice", **options: Any) -> Page:
    """A new browser context signed in to the console."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, **options)
    page = await context.new_page()
    await page.goto(console.url + "/console/")
    await page.get_by_label("Your name").fill(user)
    await page.get_by_label("API token").fill(TOKEN)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(console.url + "/console/")
    assert TOKEN not in page.url
    return page


def row(page: Page, console: Console, incident: str) -> Any:
    return page.locator(f'tr[data-incident="{console.prefix + incident}"]')


async def bar_width(page: Page, locator: Any) -> float:
    return float(await locator.evaluate("el => el.querySelector('.fill').getBoundingClientRect().width"))


async def test_wrong_token_is_refused_and_nothing_without_a_session(
    browser: Browser, console: Console
) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(console.url + "/console/")
    assert page.url.endswith("/console/login")  # the board asks to sign in first
    await page.get_by_label("Your name").fill("mallory")
    await page.get_by_label("API token").fill("not-the-token")
    async with page.expect_response("**/console/login") as answer:
        await page.get_by_role("button", name="Sign in").click()
    assert (await answer.value).status == 401
    await expect(page.get_by_role("alert")).to_have_text("Wrong token.")
    assert "not-the-token" not in page.url and await context.cookies() == []
    async with httpx.AsyncClient(base_url=console.url) as client:
        assert (await client.get("/console/rows")).status_code == 401
        assert (
            await client.get("/console/events", headers={"Accept": "text/event-stream"})
        ).status_code == 401
        refused = await client.post("/console/incident/act", data={"id": "x", "action": "acknowledged"})
        assert refused.status_code == 303 and refused.headers["location"] == "/console/login"
    await context.close()


async def test_live_board_ack_bar_acknowledge_and_incident_page(browser: Browser, console: Console) -> None:
    page = await signed_in(browser, console)
    await expect(page.locator("#live-status")).to_have_text("live", timeout=15_000)
    await page.evaluate("window.notReloaded = true")
    # 7 min 28 s into a 15 min ack clock: just under 50 %, so the bar turns amber within seconds
    trace_id = await console.publish("reported", "crit", severity="critical", region="au",
                          summary="Payments API down in Sydney", at=ago(minutes=7, seconds=28))  # fmt: skip
    crit = row(page, console, "crit")
    await expect(crit).to_be_visible(timeout=5_000)  # live, without a reload
    assert await page.evaluate("window.notReloaded") is True
    await expect(crit.locator(".state")).to_have_text("reported")
    ack_bar = crit.locator(".clock", has=page.locator(".clock-name", has_text="ack")).locator(".bar")
    before = await bar_width(page, ack_bar)
    await expect(ack_bar).to_have_class(re.compile(r"\bamber\b"), timeout=10_000)  # crossed 50 %
    await asyncio.sleep(1.5)
    assert await bar_width(page, ack_bar) > before  # the bar moves between updates
    await page.screenshot(path=str(console.shots / "board-live.png"))

    await crit.get_by_role("link").click()
    await page.wait_for_url("**/console/incident?id=*")
    await expect(page.get_by_role("heading", level=1)).to_contain_text("reported")
    buttons = page.locator("form.act button")
    assert await buttons.all_inner_texts() == ["Acknowledge", "Investigating", "Failed over", "Restored",
                                               "Post a progress note"]  # fmt: skip
    await page.get_by_role("button", name="Acknowledge").click()
    await page.wait_for_url("**sent=*")
    assert TOKEN not in page.url
    await expect(page.get_by_role("heading", level=1)).to_contain_text("acknowledged", timeout=5_000)
    # the lifecycle allows no second acknowledgement: not offered any more
    await expect(page.get_by_role("button", name="Acknowledge")).to_have_count(0)
    clocks = page.locator(".clocks-table").first
    await expect(clocks.locator("tr", has_text="ack").locator("td").last).to_have_text("met")
    await expect(clocks.locator("tr", has_text="update")).to_have_count(0)  # critical: no update clock
    entry = page.locator(".timeline li", has_text="acknowledged")
    await expect(entry).to_contain_text("/channels/console")
    await expect(entry).to_contain_text("by alice")
    # each accepted event links to its trace in the trace UI
    link = page.locator(".timeline li", has_text="reported").locator("a.trace")
    assert await link.get_attribute("href") == f"http://traces.example/trace/{trace_id}"
    await expect(page.locator("#whatif-h")).to_be_visible()
    await expect(page.locator("section", has=page.locator("#whatif-h"))).to_contain_text("Under livepro-2")
    await expect(page.locator(".notice")).to_have_text("Done: your acknowledged is applied.")
    await page.screenshot(path=str(console.shots / "incident-acknowledged.png"), full_page=True)

    # the board shows the new state and a stopped ack bar
    await page.goto(console.url + "/console/")
    crit = row(page, console, "crit")
    await expect(crit.locator(".state")).to_have_text("acknowledged")
    await expect(crit.locator(".clock-name", has_text="ack")).to_have_count(0)  # only running clocks
    await page.context.close()


async def test_breach_arrives_live_on_the_incident_page(browser: Browser, console: Console) -> None:
    await console.publish("reported", "late", severity="critical", region="uk",
                          summary="Checkout failing", at=ago(minutes=14, seconds=54))  # fmt: skip
    page = await signed_in(browser, console, "bob")
    await expect(row(page, console, "late")).to_be_visible(timeout=5_000)
    await row(page, console, "late").get_by_role("link").click()
    await expect(page.locator("#live-status")).to_have_text("live", timeout=15_000)
    status = page.locator(".clocks-table").first.locator("tr", has_text="ack").locator("td").last
    await expect(status).to_have_text("running")
    # the engine fires the breach (6 s from now, plus its grace): the page shows it without a reload
    await page.evaluate("window.notReloaded = true")
    await expect(status).to_have_text("breached", timeout=15_000)
    assert await page.evaluate("window.notReloaded") is True
    bar = page.locator(".clocks-table").first.locator("tr", has_text="ack").locator(".bar")
    await expect(bar).to_have_class(re.compile(r"\bbreached\b"))
    await expect(page.locator(".clocks-table").first.locator("tr", has_text="ack")).to_contain_text(
        "breached"
    )
    # a duplicate from a phone line is refused by the engine, and the page shows the rejection
    await console.publish("acknowledged", "late", source="/channels/phone/uk")
    await console.publish("acknowledged", "late", source="/channels/phone/us")
    rejected = page.locator(".timeline li.rejected")
    await expect(rejected).to_contain_text("duplicate", timeout=10_000)
    await expect(rejected).to_contain_text("/channels/phone/us")
    await page.context.close()


async def test_filters_and_counts(browser: Browser, console: Console) -> None:
    await console.publish("reported", "hi-us", severity="high", region="us", summary="Slow search")
    await console.publish("reported", "lo-uk", severity="low", region="uk", summary="Typo on a page")
    page = await signed_in(browser, console, "carol")
    await expect(row(page, console, "lo-uk")).to_be_visible(timeout=5_000)
    await expect(row(page, console, "hi-us")).to_be_visible()
    await page.get_by_label("Severity").select_option("high")
    await page.wait_for_url("**severity=high*")
    await expect(row(page, console, "hi-us")).to_be_visible()
    await expect(row(page, console, "lo-uk")).to_have_count(0)
    assert (
        await page.locator("tbody tr .sev").all_inner_texts()
        == ["HIGH"] * await page.locator("tbody tr").count()
    )
    await page.get_by_label("Region").select_option("uk")
    await page.wait_for_url("**region=uk*")
    await expect(page.locator(".empty")).to_have_text("No open incident matches these filters.")
    counts = await page.locator(".count").all_inner_texts()
    assert any(text.startswith("reported") for text in counts)
    await page.context.close()


async def test_board_reads_on_a_laptop_and_a_phone_light_and_dark(browser: Browser, console: Console) -> None:
    monitor = "/channels/monitor/prometheus"
    await console.publish("reported", "db-au", severity="high", region="au", at=ago(minutes=9),
                          summary="Replica lag on the AU database", source=monitor)  # fmt: skip
    await console.publish("reported", "login", severity="critical", region="uk", at=ago(minutes=16),
                          summary="Login failures for UK customers", source=monitor)  # fmt: skip
    await console.publish("reported", "mail", severity="low", region="au", summary="Email intake delayed",
                          source="/channels/email", at=ago(minutes=3))  # fmt: skip
    await console.publish("investigating", "crit", source="/channels/phone/au", note="DNS failover under way")
    page = await signed_in(browser, console, "alice")
    await expect(row(page, console, "mail")).to_be_visible(timeout=5_000)
    await expect(row(page, console, "crit").locator(".state")).to_have_text("investigating", timeout=5_000)
    ids = await page.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.incident)")
    assert ids[0] == console.prefix + "login"  # breached: the most urgent first
    await expect(row(page, console, "login").locator(".bar").first).to_have_class(re.compile(r"\bbreached\b"))
    await expect(row(page, console, "login").locator(".clock-label").first).to_contain_text("breached 1m")
    await page.screenshot(path=str(console.shots / "board.png"))
    dark = await browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark",
                                     storage_state=await page.context.storage_state())  # fmt: skip
    phone = await dark.new_page()
    await phone.goto(console.url + "/console/")
    await expect(phone.locator("tbody tr").first).to_be_visible()
    # no horizontal scrolling on a phone
    assert await phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    await phone.screenshot(path=str(console.shots / "board-phone-dark.png"), full_page=True)
    await dark.close()
    # a high incident: business time, and livepro-2 would run other clocks for it
    await row(page, console, "db-au").get_by_role("link").click()
    await page.get_by_label("Note").fill("Read traffic moved to the Melbourne replica")
    await page.get_by_role("button", name="Investigating").click()
    await expect(page.get_by_role("heading", level=1)).to_contain_text("investigating", timeout=5_000)
    entry = page.locator(".timeline li", has_text="investigating")
    await expect(entry).to_contain_text("note: Read traffic moved to the Melbourne replica")
    what_if = page.locator("section", has=page.locator("#whatif-h"))
    await expect(what_if.locator("h3")).to_have_text("Under livepro-2")  # other clocks for high
    await expect(what_if.locator("td", has_text="restore")).to_have_count(1)
    await page.screenshot(path=str(console.shots / "incident.png"), full_page=True)
    await page.context.close()


async def test_summary_with_html_is_shown_as_text(browser: Browser, console: Console) -> None:
    page = await signed_in(browser, console, "dave")
    nasty = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"><b>bold</b>'
    await console.publish("reported", "xss", severity="low", region="au", summary=nasty)
    xss = row(page, console, "xss")
    await expect(xss).to_be_visible(timeout=5_000)
    await expect(xss.locator(".summary")).to_have_text(nasty)
    assert await xss.locator("script, img, b").count() == 0
    await xss.get_by_role("link").click()
    await expect(page.locator(".summary-line")).to_have_text(nasty)
    assert await page.evaluate("window.pwned") is None
    await page.context.close()


async def test_actions_need_the_page_csrf_token_and_a_state_that_allows_them(
    browser: Browser, console: Console
) -> None:
    await console.publish("reported", "csrf", severity="low", region="us", summary="Disk filling")
    page = await signed_in(browser, console, "erin", java_script_enabled=False)
    target = f"{console.url}/console/incident?id={console.prefix}csrf"
    for _ in range(50):
        await page.goto(target)
        if await page.get_by_role("button", name="Acknowledge").count():
            break
        await asyncio.sleep(0.1)
    # a cross-site form post carries the session cookie only if SameSite allowed it; even then,
    # without the page's CSRF token (or from another origin) it is refused
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    async with httpx.AsyncClient(base_url=console.url, cookies=cookies) as client:
        form = {"id": console.prefix + "csrf", "action": "acknowledged", "csrf": "guess"}
        other = await client.post(
            "/console/incident/act", data=form, headers={"Origin": "http://evil.example"}
        )
        assert other.status_code == 403
        same = await client.post("/console/incident/act", data=form, headers={"Origin": console.url})
        assert same.status_code == 403
    # the page (no script: it does not update) still offers Acknowledge; someone else acknowledges
    await console.publish("acknowledged", "csrf", source="/channels/email")
    for _ in range(50):
        detail = await console.service.pool.fetchval(  # type: ignore[union-attr]
            "SELECT state FROM incidents WHERE incident_id = $1", console.prefix + "csrf"
        )
        if detail == "acknowledged":
            break
        await asyncio.sleep(0.1)
    async with page.expect_response("**/console/incident/act") as answer:
        await page.get_by_role("button", name="Acknowledge").click()
    assert (await answer.value).status == 409
    await expect(page.get_by_role("alert")).to_contain_text("not possible in state acknowledged")
    await page.context.close()


async def test_the_board_recovers_by_itself_after_the_engine_restarts(
    browser: Browser, console: Console
) -> None:
    page = await signed_in(browser, console, "frank")
    status = page.locator("#live-status")
    await expect(status).to_have_text("live", timeout=15_000)
    await page.evaluate("window.notReloaded = true")
    await console.stop()
    await expect(status).to_have_text("reconnecting…", timeout=5_000)
    # reported while no engine runs: read by the next one, shown once the page is back
    await console.publish(
        "reported", "while-down", severity="critical", region="us", summary="Reported meanwhile"
    )
    await console.start()
    await expect(status).to_have_text("live", timeout=20_000)
    await expect(row(page, console, "while-down")).to_be_visible(timeout=10_000)
    await console.publish(
        "reported", "after", severity="low", region="us", summary="Reported after the restart"
    )
    await expect(row(page, console, "after")).to_be_visible(timeout=5_000)
    assert await page.evaluate("window.notReloaded") is True
    await page.context.close()

"""The console's routes (mounted at /console by the engine's HTTP server)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import orjson
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from incident_console import view
from incident_console.auth import (
    Access,
    Session,
    csrf_key,
    csrf_ok,
    session_of,
    sign_in,
    sign_out,
    valid_user,
)
from incident_console.backend import ConsoleBackend, IncidentSummary
from incident_console.live import LiveHub
from incident_contracts import InputError, parse_event

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
SOURCE = "/channels/console"
STATES = ("reported", "acknowledged", "investigating", "failed_over")
SEVERITIES = ("critical", "high", "low")
REGIONS = ("au", "us", "uk")
ACTION_LABELS = {
    "acknowledged": "Acknowledge",
    "investigating": "Investigating",
    "failed_over": "Failed over",
    "restored": "Restored",
    "updated": "Post a progress note",
}
_HEARTBEAT = 15.0
_MAX_FORM = 64 * 1024


@dataclass
class ConsoleConfig:
    """The console's settings, given by the engine's composition."""

    access: Access
    kafka_options: dict[str, Any] = field(default_factory=dict)  # aiokafka client options (bootstrap, TLS)
    trace_url: str | None = None  # a trace in the trace UI, `{trace_id}` replaced


def console_app(backend: ConsoleBackend, config: ConsoleConfig) -> Starlette:
    """The console as an ASGI app, to mount at /console."""
    hub = LiveHub(config.kafka_options)
    _exiting.clear()  # a new server (tests run several in one process)
    templates = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True)
    )
    templates.globals.update(view=view, labels=ACTION_LABELS, trace_url=_trace_link(config.trace_url))
    access = config.access

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(**context)
        return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)

    def signed_in(
        handler: Callable[[Request, Session], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            session = session_of(request, access)
            if session is None:
                if request.headers.get("accept", "").startswith(
                    "text/event-stream"
                ) or request.url.path.endswith(("/rows", "/live")):
                    return Response("sign in again", status_code=401)
                return RedirectResponse("/console/login", status_code=303)
            return await handler(request, session)

        return guarded

    async def login_form(request: Request) -> Response:
        return page("login.html", access=access, error=None)

    async def login(request: Request) -> Response:
        if not _same_origin_or_none(request):  # before reading a body at all
            return page("login.html", 403, access=access, error="This sign-in did not come from this page.")
        form = await _form(request)
        if form is None:
            return page("login.html", 413, access=access, error="That form is too large.")
        user = valid_user(form.get("user", ""))
        token = form.get("token", "")
        if user is None:
            return page(
                "login.html", 400, access=access, error="Your name: 1 to 64 letters, digits, spaces or ._@+-"
            )
        if access.token is not None and not access.token_ok(token):
            log.info("console: sign-in refused (wrong token) for %r", user)
            return page("login.html", 401, access=access, error="Wrong token.")
        if access.token is None and not access.open:
            return page(
                "login.html", 401, access=access, error="The console is closed: no token is configured."
            )
        response = RedirectResponse("/console/", status_code=303)
        sign_in(response, request, access, user)
        return response

    async def logout(request: Request) -> Response:
        response = RedirectResponse("/console/login", status_code=303)
        sign_out(response)
        return response

    async def board(request: Request, session: Session) -> Response:
        return page("board.html", **await _board_context(request, session))

    async def board_rows(request: Request, session: Session) -> Response:
        return page("board_rows.html", **await _board_context(request, session))

    async def _board_context(request: Request, session: Session) -> dict[str, Any]:
        now = datetime.now(UTC)
        incidents = await backend.open_incidents(now)
        chosen = {k: request.query_params.get(k, "") for k in ("region", "severity", "state", "policy")}
        counts = {s: sum(1 for i in incidents if i.state == s) for s in STATES}
        shown = [i for i in incidents if _matches(i, chosen)]
        shown.sort(key=lambda i: (i.urgency, i.reported_at))
        return {
            "session": session,
            "now": now,
            "incidents": shown,
            "total": len(incidents),
            "counts": counts,
            "chosen": chosen,
            "states": STATES,
            "severities": SEVERITIES,
            "regions": REGIONS,
            "policies": backend.policies(),
            "query": urlencode({k: v for k, v in chosen.items() if v}),
        }

    async def incident_page(request: Request, session: Session) -> Response:
        context = await _incident_context(request, session)
        if context is None:
            return page("missing.html", 404, session=session, incident_id=request.query_params.get("id", ""))
        return page("incident.html", **context)

    async def incident_live(request: Request, session: Session) -> Response:
        context = await _incident_context(request, session)
        if context is None:
            return Response("no such incident", status_code=404)
        return page("incident_body.html", **context)

    async def _incident_context(
        request: Request, session: Session, incident_id: str | None = None, **extra: Any
    ) -> dict[str, Any] | None:
        incident_id = incident_id if incident_id is not None else request.query_params.get("id", "")
        now = datetime.now(UTC)
        detail = await backend.incident(incident_id, now) if incident_id else None
        if detail is None:
            return None
        timeline = sorted([*detail.timeline, *hub.rejected(incident_id)], key=lambda e: e.time)
        sent = request.query_params.get("sent")
        mine = [e for e in timeline if sent and e.event_id == sent]
        refused = next((e for e in mine if not e.accepted), None)
        applied = next((e for e in mine if e.accepted), None)
        return {
            "session": session,
            "now": now,
            "d": detail,
            "i": detail.incident,
            "timeline": timeline,
            "sent": sent,
            "refused": refused,
            "applied": applied,
            "csrf": session.csrf(csrf_key(request, access)),
            **extra,
        }

    async def act(request: Request, session: Session) -> Response:
        form = await _form(request)
        if form is None:
            return Response("refused: the form is over 64 KiB", 413)
        if not csrf_ok(request, access, session, form.get("csrf", "")):
            return Response("refused: this request did not come from the console page (CSRF check)", 403)
        incident_id, action = form.get("id", ""), form.get("action", "")
        now = datetime.now(UTC)

        async def refuse(status: int, error: str) -> Response:
            context = await _incident_context(request, session, incident_id)
            if context is None:
                return page("missing.html", 404, session=session, incident_id=incident_id)
            return page("incident.html", status, error=error, **context)

        detail = await backend.incident(incident_id, now)
        if detail is None:
            return page("missing.html", 404, session=session, incident_id=incident_id)
        if action not in detail.actions:
            what = ACTION_LABELS.get(action, action)
            return await refuse(409, f"{what} is not possible in state {detail.incident.state}.")
        try:
            event = build_action(incident_id, action, session.user, form, now)
        except InputError as exc:
            return await refuse(400, f"Not sent: {exc}")
        try:
            await backend.publish(event)
        except Exception as exc:
            log.warning("console: could not publish %s for %s: %r", event["type"], incident_id, exc)
            return await refuse(503, "Kafka did not take the event: nothing was sent. Try again.")
        log.info(
            "console: %s published %s for %s (%s)", session.user, event["type"], incident_id, event["id"]
        )
        query = urlencode({"id": incident_id, "sent": event["id"]})
        return RedirectResponse(f"/console/incident?{query}", status_code=303)

    async def events(request: Request, session: Session) -> Response:
        queue = hub.subscribe()

        async def stream() -> AsyncIterator[bytes]:
            try:
                yield b"retry: 2000\n\n"
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(hub.started.wait(), 10)
                yield b"event: ready\ndata: {}\n\n"  # the page re-reads: what happened before is included
                idle = 0.0
                while not _exiting.is_set():
                    try:
                        message = await asyncio.wait_for(queue.get(), 1.0)
                    except TimeoutError:
                        idle += 1.0
                        if idle >= _HEARTBEAT:
                            idle = 0.0
                            yield b": keep-alive\n\n"
                        continue
                    idle = 0.0
                    yield b"event: change\ndata: " + orjson.dumps(message) + b"\n\n"
            finally:
                hub.unsubscribe(queue)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await hub.stop()

    routes = [
        Route("/", signed_in(board), include_in_schema=False),
        Route("/rows", signed_in(board_rows), include_in_schema=False),
        Route("/login", login_form, methods=["GET"], include_in_schema=False),
        Route("/login", login, methods=["POST"], include_in_schema=False),
        Route("/logout", logout, methods=["POST"], include_in_schema=False),
        Route("/incident", signed_in(incident_page), include_in_schema=False),
        Route("/incident/live", signed_in(incident_live), include_in_schema=False),
        Route("/incident/act", signed_in(act), methods=["POST"], include_in_schema=False),
        Route("/events", signed_in(events), include_in_schema=False),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.hub = hub
    return app


def build_action(
    incident_id: str, action: str, user: str, form: dict[str, str], now: datetime
) -> dict[str, Any]:
    """The input CloudEvent of a console action, checked against the contract (InputError if not valid)."""
    note, site = form.get("note", "").strip(), form.get("site", "").strip()
    data: dict[str, Any] = {}
    if action == "acknowledged":
        data["by"] = user
    elif action == "failed_over" and site:
        data["site"] = site
    elif action in ("investigating", "restored", "updated") and note:
        data["note"] = note
    if action == "updated" and not note:
        raise InputError("a progress note needs a text")
    event = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": SOURCE,
        "type": f"incident.{action}",
        "subject": incident_id,
        "time": now.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
        "user": user,  # extension attribute: who acted in the console
    }
    parse_event(orjson.dumps(event))  # refuse to publish what the engine would dead-letter
    return event


def _matches(incident: IncidentSummary, chosen: dict[str, str]) -> bool:
    return all(not want or getattr(incident, key) == want for key, want in chosen.items())


async def _form(request: Request) -> dict[str, str] | None:
    """The URL-encoded form of a POST (the last value of each field); None when it is over 64 KiB,
    found out without reading more than that (the sign-in form is served to anyone)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _MAX_FORM:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_FORM:
            return None
        chunks.append(chunk)
    parsed = parse_qs(b"".join(chunks).decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[-1] for k, v in parsed.items()}


def _same_origin_or_none(request: Request) -> bool:
    from incident_console.auth import same_origin

    has = request.headers.get("origin") or request.headers.get("referer")
    return not has or same_origin(request)


def _trace_link(template: str | None) -> Callable[[str | None], str | None]:
    def link(trace_id: str | None) -> str | None:
        if not template or not trace_id:
            return None
        return template.replace("{trace_id}", trace_id)

    return link


_exiting = asyncio.Event()


def server_exiting() -> None:
    """Close the open event streams (the server is shutting down; the browsers reconnect elsewhere)."""
    _exiting.set()


def watch_uvicorn_exit() -> None:
    """End the event streams when uvicorn is told to exit: it waits for open responses before it stops,
    and an event stream never ends by itself (sse-starlette does the same)."""
    from uvicorn.server import Server

    original = Server.handle_exit
    if getattr(original, "_console_hook", False):
        return

    def handle_exit(self: Server, sig: int, frame: Any) -> None:
        server_exiting()
        original(self, sig, frame)

    handle_exit._console_hook = True  # type: ignore[attr-defined]
    Server.handle_exit = handle_exit  # type: ignore[method-assign]


_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:;"
        " frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

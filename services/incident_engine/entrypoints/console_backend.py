"""The engine's side of the SRE console: `incident_console.ConsoleBackend` from the store and the domain."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from starlette.applications import Starlette

from incident_console import (
    ClockView,
    ConsoleConfig,
    IncidentDetail,
    IncidentSummary,
    TimelineEntry,
    TimerView,
    WhatIfView,
    console_app,
)
from incident_console.app import watch_uvicorn_exit
from incident_console.auth import Access
from incident_contracts import TOPIC_EVENTS
from incident_contracts.constants import INPUT_TYPES
from incident_engine.domain import BusinessCalendar, Calendar, Incident
from incident_engine.domain.lifecycle import Outcome, transition, trigger_of
from incident_engine.domain.model import TICK, ClockState
from incident_engine.entrypoints.app import EngineService
from incident_engine.replay import replay_incident
from incident_platform.kafka import kafka_security
from incident_platform.telemetry import inject_headers

_OPEN_LIMIT = 1000  # the board shows at most this many open incidents
_TIMELINE_LIMIT = 500
_ZONES = {"au": "Australia/Sydney", "us": "America/New_York", "uk": "Europe/London"}
# The report's summary and channel are in the projection's body (migration 0010 filled older ones).
_SUMMARY_SQL = (
    "SELECT i.incident_id, i.state, i.policy, i.severity, i.region, i.reported_at, i.updated_at, i.body"
    " FROM incidents i"
)


class EngineConsoleBackend:
    """Reads the projections and the event log; publishes with a producer of its own (acks=all)."""

    def __init__(self, service: EngineService) -> None:
        self.service = service
        self._producer: AIOKafkaProducer | None = None

    def policies(self) -> list[str]:
        """Names of the loaded policies."""
        return self.service.domain.policies.names() if self.service.domain is not None else []

    async def open_incidents(self, now: datetime) -> list[IncidentSummary]:
        """Every incident not yet restored, with its clocks as of `now`."""
        pool = self.service.pool
        if pool is None:
            return []
        rows = await pool.fetch(
            _SUMMARY_SQL + " WHERE i.state <> 'restored' ORDER BY i.reported_at LIMIT $1", _OPEN_LIMIT
        )
        return [self._summary(row, now) for row in rows]

    async def incident(self, incident_id: str, now: datetime) -> IncidentDetail | None:
        """One incident with its timeline, pending timers and what-if under the other policies."""
        pool = self.service.pool
        if pool is None:
            return None
        row = await pool.fetchrow(_SUMMARY_SQL + " WHERE i.incident_id = $1", incident_id)
        if row is None:
            return None
        log = await pool.fetch(
            "SELECT seq, event_id, type, source, event_time, processed_at, envelope::text AS envelope,"
            " trace_context FROM event_log WHERE incident_id = $1 ORDER BY seq LIMIT $2",
            incident_id,
            _TIMELINE_LIMIT,
        )
        summary = self._summary(row, now)
        incident = Incident.from_json(_json(row["body"]))
        return IncidentDetail(
            incident=summary,
            timeline=[_entry(r) for r in log],
            timers=[TimerView(t.due_at, t.clock, t.kind, t.threshold) for t in incident.timers],
            what_if=self._what_if(incident, log, now),
            actions=allowed_actions(incident.state),
        )

    async def publish(self, event: dict[str, Any]) -> None:
        """Publish an input event keyed by its incident, with the current trace context (acks=all)."""
        if self._producer is None:
            settings = self.service.settings
            producer = AIOKafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap_servers, enable_idempotence=True, acks="all",
                client_id="incident-console", **kafka_security(settings),
            )  # fmt: skip
            await producer.start()
            self._producer = producer
        headers = inject_headers([("content-type", b"application/cloudevents+json")])
        await self._producer.send_and_wait(
            TOPIC_EVENTS, orjson.dumps(event), key=event["subject"].encode(), headers=headers
        )

    async def close(self) -> None:
        """Stop the producer."""
        if self._producer is not None:
            with contextlib.suppress(Exception):
                await self._producer.stop()
            self._producer = None

    def _summary(self, row: Any, now: datetime) -> IncidentSummary:
        incident = Incident.from_json(_json(row["body"]))
        calendar = self.service.calendar_of(incident)
        zone = self._zone(incident)
        return IncidentSummary(
            id=row["incident_id"], state=row["state"], severity=row["severity"], region=row["region"],
            policy=row["policy"], summary=incident.summary or "", channel=incident.source or "",
            reported_at=row["reported_at"], updated_at=row["updated_at"],
            clocks=[clock_view(n, c, calendar, zone, now) for n, c in incident.clocks.items()],
        )  # fmt: skip

    def _zone(self, incident: Incident) -> str:
        domain = self.service.domain
        if domain is not None and incident.policy in domain.policies:
            calendar = domain.policies.get(incident.policy).calendars.get(incident.region)
            if calendar is not None:
                return str(calendar.timezone.key)
        return _ZONES.get(incident.region, "UTC")

    def _what_if(self, incident: Incident, log: list[Any], now: datetime) -> list[WhatIfView]:
        """The incident's clocks re-evaluated under each other policy (on time, nothing written)."""
        domain = self.service.domain
        if domain is None or not log or log[0]["type"] != "incident.reported":
            return []
        mine = domain.policies.get(incident.policy) if incident.policy in domain.policies else None
        views = []
        for name in domain.policies.names():
            if name == incident.policy:
                continue
            other = domain.policies.get(name)
            steps = [(r["processed_at"], r["envelope"]) for r in log]
            shadow, _ = replay_incident(domain, steps, policy_override=name, on_time_until=now)
            if shadow is None:
                continue
            same = mine is not None and (
                other.rules(incident.severity) == mine.rules(incident.severity)
                and other.calendar(incident.severity, incident.region)
                == mine.calendar(incident.severity, incident.region)
            )
            calendar = self.service.calendar_of(shadow)
            zone = self._zone(shadow)
            clocks = [clock_view(n, c, calendar, zone, now) for n, c in shadow.clocks.items()]
            views.append(WhatIfView(name, clocks, same))
        return views


def clock_view(
    name: str, clock: ClockState, calendar: Calendar | None, zone: str, now: datetime
) -> ClockView:
    """A clock in business time: its budget, how much of it has passed, and whether it runs now."""
    end = clock.stopped_at or now
    if calendar is None:  # a retired policy: wall-clock time is the best we can say
        budget = (clock.due_at - clock.started_at).total_seconds()
        elapsed = max(0.0, (end - clock.started_at).total_seconds())
        return ClockView(name, clock.status, clock.cycle, clock.started_at, clock.due_at, clock.stopped_at,
                         budget, elapsed, True, None, zone)  # fmt: skip
    budget = calendar.elapsed(clock.started_at, clock.due_at).total_seconds()
    elapsed = calendar.elapsed(clock.started_at, end).total_seconds()
    open_now = calendar.is_open(now)
    resumes = None
    if not open_now and isinstance(calendar, BusinessCalendar):
        resumes = calendar.add(now, TICK) - TICK  # the first instant business time runs again
    return ClockView(name, clock.status, clock.cycle, clock.started_at, clock.due_at, clock.stopped_at,
                     budget, elapsed, open_now, resumes, zone)  # fmt: skip


def allowed_actions(state: str) -> list[str]:
    """The input events (without `incident.`) the lifecycle accepts in `state`, reported excluded."""
    allowed = []
    for event_type in INPUT_TYPES[1:]:
        outcome, _ = transition(state, trigger_of(event_type))
        if outcome in (Outcome.MOVE, Outcome.STAY):
            allowed.append(trigger_of(event_type))
    return allowed


def _entry(row: Any) -> TimelineEntry:
    envelope = orjson.loads(row["envelope"])
    data = envelope.get("data") or {}
    user = envelope.get("user")  # who acted in the console (an extension attribute)
    shown = [k for k in ("summary", "note", "by", "site", "customer") if data.get(k)]
    detail = "; ".join(f"{k}: {data[k]}" for k in shown if not (k == "by" and data[k] == user))
    context = _json(row["trace_context"]) if row["trace_context"] else {}
    traceparent = context.get("traceparent", "") if isinstance(context, dict) else ""
    parts = traceparent.split("-")
    trace_id = parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None
    return TimelineEntry(
        time=row["event_time"].astimezone(UTC), type=row["type"], channel=row["source"],
        event_id=row["event_id"], accepted=True, seq=row["seq"], trace_id=trace_id, detail=detail,
        user=user if isinstance(user, str) else None,
    )  # fmt: skip


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


def mount_console(service: EngineService) -> tuple[Starlette, Callable[[], Awaitable[None]]]:
    """The console app for an engine (mount it at /console), and what to await when the engine stops
    (a mounted app's own lifespan does not run)."""
    settings = service.settings
    token = settings.incidents_api_token.get_secret_value() if settings.incidents_api_token else None
    access = Access(
        token, settings.incidents_api_open, settings.incidents_console_user_header,
        settings.incidents_console_cookie_secure,
    )  # fmt: skip
    kafka = {"bootstrap_servers": settings.kafka_bootstrap_servers, **kafka_security(settings)}
    backend = EngineConsoleBackend(service)
    config = ConsoleConfig(access, kafka, settings.incidents_trace_ui_url)
    app = console_app(backend, config)
    watch_uvicorn_exit()

    async def close() -> None:
        await app.state.hub.stop()
        await backend.close()

    return app, close

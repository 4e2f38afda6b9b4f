"""HTTP on the engine: probes, Prometheus metrics and the read API (Starlette, served by uvicorn)."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from incident_engine.adapters.telemetry import metrics_text
from incident_engine.domain import Calendar, Incident
from incident_engine.entrypoints.app import EngineService

_INCIDENT_COLUMNS = "incident_id, state, policy, severity, region, seq, reported_at, updated_at"


def create_http_app(service: EngineService) -> Starlette:
    """The ASGI app; its lifespan starts and stops the engine."""

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    async def healthz(_request: Request) -> JSONResponse:
        """
        summary: Liveness
        responses:
          200: {description: The process runs, content: {application/json: {example: {status: ok}}}}
        """
        return JSONResponse({"status": "ok"})

    async def readyz(_request: Request) -> JSONResponse:
        """
        summary: Readiness (partitions assigned, their timers loaded, Postgres and Kafka answering)
        responses:
          200: {description: Ready, content: {application/json: {schema: {$ref: "#/components/schemas/Ready"}}}}
          503: {description: Not ready yet, content: {application/json: {schema: {$ref: "#/components/schemas/Ready"}}}}
        """
        status = await service.readiness()
        return JSONResponse(status, status_code=200 if status["ready"] else 503)

    async def metrics(_request: Request) -> Response:
        """
        summary: Prometheus metrics
        responses:
          200: {description: Prometheus text exposition, content: {text/plain: {}}}
        """
        body, content_type = service.telemetry.metrics_text() if service.telemetry else metrics_text()
        return Response(body, media_type=content_type)

    async def get_incident(request: Request) -> JSONResponse:
        """
        summary: One incident's state, policy, timeline and clocks
        security: [{bearer: []}]
        parameters:
          - {name: incident_id, in: path, required: true, schema: {type: string}}
        responses:
          200: {description: The incident, content: {application/json: {schema: {$ref: "#/components/schemas/Incident"}}}}
          401: {description: Missing or wrong bearer token}
          404: {description: No such incident}
        """
        if (denied := _authorize(request, service)) is not None:
            return denied
        assert service.pool is not None
        incident_id = request.path_params["incident_id"]
        row = await service.pool.fetchrow("SELECT body FROM incidents WHERE incident_id = $1", incident_id)
        if row is None:
            return JSONResponse({"error": f"no incident {incident_id!r}"}, status_code=404)
        log = await service.pool.fetch(
            "SELECT seq, event_id, type, source, event_time, processed_at FROM event_log"
            " WHERE incident_id = $1 ORDER BY seq",
            incident_id,
        )
        incident = Incident.from_json(row["body"])
        calendar = service.calendar_of(incident)
        return JSONResponse(describe_incident(incident, log, datetime.now(UTC), calendar))

    async def list_incidents(request: Request) -> JSONResponse:
        """
        summary: Incidents, most recently changed first
        security: [{bearer: []}]
        parameters:
          - {name: state, in: query, schema: {type: string, enum: [reported, acknowledged, investigating, failed_over, restored]}}
          - {name: severity, in: query, schema: {type: string, enum: [critical, high, low]}}
          - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 100}}
        responses:
          200: {description: The incidents, content: {application/json: {schema: {$ref: "#/components/schemas/IncidentList"}}}}
          400: {description: Bad query parameter}
          401: {description: Missing or wrong bearer token}
        """
        if (denied := _authorize(request, service)) is not None:
            return denied
        assert service.pool is not None
        state, severity = request.query_params.get("state"), request.query_params.get("severity")
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            return JSONResponse({"error": "limit must be a whole number"}, status_code=400)
        if not 1 <= limit <= 1000:
            return JSONResponse({"error": "limit must be between 1 and 1000"}, status_code=400)
        rows = await service.pool.fetch(
            f"SELECT {_INCIDENT_COLUMNS} FROM incidents"
            " WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR severity = $2)"
            " ORDER BY updated_at DESC LIMIT $3",
            state,
            severity,
            limit,
        )
        return JSONResponse({"incidents": [_jsonable(dict(r)) for r in rows]})

    async def openapi(request: Request) -> Response:
        """
        summary: This document
        responses:
          200: {description: OpenAPI 3 document, content: {application/json: {}}}
        """
        return JSONResponse(openapi_document(request.app.routes))

    routes = [
        Route("/openapi.json", openapi, include_in_schema=False),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/incidents", list_incidents),
        Route("/incidents/{incident_id:path}", get_incident),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


_CLOCK = {"type": "object", "properties": {
    "started_at": {"type": "string", "format": "date-time"}, "due_at": {"type": "string", "format": "date-time"},
    "cycle": {"type": "integer"}, "stopped_at": {"type": "string", "format": "date-time", "nullable": True},
    "status": {"type": "string", "enum": ["running", "met", "breached", "cancelled"]},
    "remaining_seconds": {"type": "number", "nullable": True},
    "remaining_business_seconds": {"type": "number", "nullable": True},
}}  # fmt: skip
OPENAPI_BASE: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "Incident SLA engine", "version": "1.0.0",
             "description": "Probes, metrics and the read API of an engine replica."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                       "description": "INCIDENTS_API_TOKEN (the read API is open without one)"}},
        "schemas": {
            "Ready": {"type": "object", "properties": {"ready": {"type": "boolean"},
                      "postgres": {"type": "boolean"}, "kafka": {"type": "boolean"},
                      "partitions": {"type": "array", "items": {"type": "integer"}},
                      "timers": {"type": "integer"}, "batches": {"type": "integer"}}},
            "Clock": _CLOCK,
            "Incident": {"type": "object", "properties": {
                "id": {"type": "string"}, "state": {"type": "string"}, "policy": {"type": "string"},
                "severity": {"type": "string"}, "region": {"type": "string"},
                "reported_at": {"type": "string", "format": "date-time"},
                "timeline": {"type": "array", "items": {"type": "object"}},
                "clocks": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Clock"}},
                "pending_timers": {"type": "array", "items": {"type": "object"}}}},
            "IncidentList": {"type": "object", "properties": {"incidents": {"type": "array", "items": {
                "type": "object"}}}},
        },
    },
}  # fmt: skip


def openapi_document(routes: list[Any]) -> dict[str, Any]:
    """The OpenAPI document, from the routes' YAML docstrings (Starlette's schema generator)."""
    from starlette.schemas import SchemaGenerator

    return _str_keys(SchemaGenerator(OPENAPI_BASE).get_schema(routes))


def _str_keys(value: Any) -> Any:
    # YAML reads `200:` as an integer; OpenAPI's response codes are strings.
    if isinstance(value, dict):
        return {str(k): _str_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_str_keys(v) for v in value]
    return value


def _authorize(request: Request, service: EngineService) -> JSONResponse | None:
    token = service.settings.incidents_api_token
    if token is None:
        return None  # no token configured: the read API is open (documented)
    given = request.headers.get("authorization", "")
    expected = f"Bearer {token.get_secret_value()}"
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return JSONResponse(
            {"error": "missing or wrong bearer token"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    return None


def describe_incident(
    incident: Incident, log: list[Any], now: datetime, calendar: Calendar | None = None
) -> dict[str, Any]:
    """The read API's view of an incident: state, policy, timeline and each clock (remaining time in
    wall-clock seconds and, with its calendar, in business seconds: what the SLA actually counts)."""
    return {
        "id": incident.id,
        "state": incident.state,
        "policy": incident.policy,
        "severity": incident.severity,
        "region": incident.region,
        "reported_at": incident.reported_at.isoformat(),
        "timeline": [_jsonable(dict(r)) for r in log],
        "clocks": {
            name: {
                **clock.to_json(),
                "remaining_seconds": _remaining(clock.due_at, clock.stopped_at, now),
                "remaining_business_seconds": _remaining_business(
                    clock.due_at, clock.stopped_at, now, calendar
                ),
            }
            for name, clock in incident.clocks.items()
        },
        "pending_timers": [timer.to_json() for timer in incident.timers],
    }


def _remaining(due_at: datetime, stopped_at: datetime | None, now: datetime) -> float | None:
    if stopped_at is not None:
        return None
    return (due_at - now).total_seconds()


def _remaining_business(
    due_at: datetime, stopped_at: datetime | None, now: datetime, calendar: Calendar | None
) -> float | None:
    if stopped_at is not None or calendar is None:
        return None
    if due_at <= now:
        return -calendar.elapsed(due_at, now).total_seconds()
    return calendar.elapsed(now, due_at).total_seconds()


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}

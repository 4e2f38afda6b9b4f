"""HTTP on the engine: probes, Prometheus metrics and the read API (Starlette, served by uvicorn)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from incident_contracts.constants import REGIONS, SEVERITIES, STATES
from incident_engine.adapters.telemetry import metrics_text
from incident_engine.domain import Calendar, Incident, PolicyRegistry
from incident_engine.entrypoints.app import EngineService
from incident_engine.entrypoints.console_backend import mount_console

_INCIDENT_COLUMNS = "incident_id, state, policy, severity, region, seq, reported_at, updated_at"


def create_http_app(service: EngineService) -> Starlette:
    """The ASGI app; its lifespan starts and stops the engine."""
    console, close_console = mount_console(service)  # the SRE console, at /console

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await close_console()
            await service.stop()

    async def healthz(_request: Request) -> JSONResponse:
        """
        summary: Liveness
        responses:
          200: {description: The process runs, content: {application/json: {example: {status: ok}}}}
          503: {description: A task of the engine ended (restart the process), content: {application/json: {example: {status: dead}}}}
        """
        if not service.alive():
            return JSONResponse({"status": "dead"}, status_code=503)
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
        summary: One incident's state, policy, clocks and a page of its timeline
        security: [{bearer: []}]
        parameters:
          - {name: incident_id, in: path, required: true, schema: {type: string}}
          - {name: timeline_limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 100}}
          - {name: timeline_after, in: query, description: "Events after this seq (the previous page's timeline_next)", schema: {type: integer, minimum: 0, default: 0}}
        responses:
          200: {description: The incident, content: {application/json: {schema: {$ref: "#/components/schemas/Incident"}}}}
          400: {description: Bad query parameter}
          401: {description: "Missing or wrong bearer token, or no token configured (the read API is closed)"}
          404: {description: No such incident}
        """
        if (denied := _authorize(request, service)) is not None:
            return denied
        assert service.pool is not None
        incident_id = request.path_params["incident_id"]
        try:
            limit = _int_param(request, "timeline_limit", 100, 1, 1000)
            after = _int_param(request, "timeline_after", 0, 0, 2**31 - 1)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        row = await service.pool.fetchrow("SELECT body FROM incidents WHERE incident_id = $1", incident_id)
        if row is None:
            return JSONResponse({"error": f"no incident {incident_id!r}"}, status_code=404)
        log = await service.pool.fetch(
            "SELECT seq, event_id, type, source, event_time, processed_at FROM event_log"
            " WHERE incident_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            incident_id,
            after,
            limit + 1,  # one more than asked: whether there is a next page
        )
        incident = Incident.from_json(row["body"])
        calendar = service.calendar_of(incident)
        body = describe_incident(incident, log[:limit], datetime.now(UTC), calendar)
        body["timeline_next"] = log[limit - 1]["seq"] if len(log) > limit else None
        return JSONResponse(body)

    async def list_incidents(request: Request) -> JSONResponse:
        """
        summary: Incidents, most recently reported first, a page at a time
        description: >-
          Filters combine (AND). Keyset pagination on (reported_at, incident_id), which never change: a
          page's `next` is the `after` of the following page, and a walk through the pages sees every
          incident reported before it started exactly once, each in its state when its page was read
          (incidents reported meanwhile sort before the first page's cursor). An unknown parameter or
          a bad value answers 400.
        security: [{bearer: []}]
        parameters:
          - {name: state, in: query, schema: {type: string, enum: [reported, acknowledged, investigating, failed_over, restored]}}
          - {name: severity, in: query, schema: {type: string, enum: [critical, high, low]}}
          - {name: region, in: query, schema: {type: string, enum: [au, us, uk]}}
          - {name: policy, in: query, description: "A policy name (a loaded policy, or one incidents are pinned to)", schema: {type: string}}
          - {name: breached, in: query, description: "true: at least one clock breached; false: none", schema: {type: boolean}}
          - {name: limit, in: query, schema: {type: integer, minimum: 1, maximum: 1000, default: 100}}
          - {name: after, in: query, description: "The previous page's `next` cursor (opaque)", schema: {type: string}}
        responses:
          200: {description: The incidents, content: {application/json: {schema: {$ref: "#/components/schemas/IncidentList"}}}}
          400: {description: "Unknown parameter or bad value (JSON `error` says which and what is allowed)", content: {application/json: {schema: {$ref: "#/components/schemas/Error"}}}}
          401: {description: "Missing or wrong bearer token, or no token configured (the read API is closed)"}
        """
        if (denied := _authorize(request, service)) is not None:
            return denied
        assert service.pool is not None
        known = set(policies().names())
        wanted = request.query_params.get("policy")
        if wanted and wanted not in known and await retired_policy(wanted):
            known.add(wanted)
        try:
            where, args = _list_filters(request.query_params, known)
            limit = _int_param(request, "limit", 100, 1, 1000)
            cursor = _decode_cursor(request.query_params.get("after"))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if cursor is not None:  # keyset pagination: rows strictly after the last one shown
            where.append(f"(reported_at, incident_id) < (${len(args) + 1}, ${len(args) + 2})")
            args += cursor
        sql = f"SELECT {_INCIDENT_COLUMNS} FROM incidents"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY reported_at DESC, incident_id DESC LIMIT ${len(args) + 1}"
        rows = await service.pool.fetch(sql, *args, limit + 1)  # one more: whether there is a next page
        page = rows[:limit]
        more = len(rows) > limit
        next_cursor = _encode_cursor(page[-1]["reported_at"], page[-1]["incident_id"]) if more else None
        return JSONResponse({"incidents": [_jsonable(dict(r)) for r in page], "next": next_cursor})

    loaded: list[PolicyRegistry] = []

    def policies() -> PolicyRegistry:
        """The running engine's policies; before it starts, those of the configured folder."""
        if service.domain is not None:
            return service.domain.policies
        if not loaded:
            loaded.append(PolicyRegistry.load(service.settings.incidents_policy_dir))
        return loaded[0]

    async def retired_policy(name: str) -> bool:
        """True when incidents are pinned to `name` though it is no longer loaded."""
        assert service.pool is not None
        sql = "SELECT EXISTS (SELECT 1 FROM incidents WHERE policy = $1)"
        return bool(await service.pool.fetchval(sql, name))

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
        Mount("/console", console),
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
                                       "description": "INCIDENTS_API_TOKEN (without one the read API answers 401 unless INCIDENTS_API_OPEN=true)"}},
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
                "timeline_next": {"type": "integer", "nullable": True,
                                  "description": "timeline_after of the next page (null: the last page)"},
                "clocks": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/Clock"}},
                "pending_timers": {"type": "array", "items": {"type": "object"}}}},
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}},
            "IncidentList": {"type": "object", "properties": {"incidents": {"type": "array", "items": {
                "type": "object"}}, "next": {"type": "string", "nullable": True,
                                             "description": "`after` of the next page (null: the last page)"}}},
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


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high]; ValueError says what is wrong."""
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}")
    return value


_LIST_PARAMS = ("state", "severity", "region", "policy", "breached", "limit", "after")
_CHOICES = {"state": STATES, "severity": SEVERITIES, "region": REGIONS}
# A clock breached and not retracted (a retraction sets it back to `met`).
_BREACHED = "EXISTS (SELECT 1 FROM json_each(body->'clocks') AS c WHERE c.value->>'status' = 'breached')"


def _list_filters(params: Mapping[str, str], policies: set[str]) -> tuple[list[str], list[Any]]:
    """SQL conditions and arguments of GET /incidents' filters; ValueError names a bad one."""
    if unknown := sorted(set(params) - set(_LIST_PARAMS)):
        raise ValueError(f"unknown parameter {unknown[0]!r}; known: {', '.join(_LIST_PARAMS)}")
    where: list[str] = []
    args: list[Any] = []
    for name, allowed in (*_CHOICES.items(), ("policy", tuple(sorted(policies)))):
        value = params.get(name)
        if value is None:
            continue
        if value not in allowed:
            raise ValueError(f"unknown {name} {value!r}; one of: {', '.join(allowed)}")
        args.append(value)
        where.append(f"{name} = ${len(args)}")
    breached = params.get("breached")
    if breached is not None:
        if breached not in ("true", "false"):
            raise ValueError(f"breached must be true or false, not {breached!r}")
        where.append(_BREACHED if breached == "true" else f"NOT {_BREACHED}")
    return where, args


def _encode_cursor(reported_at: datetime, incident_id: str) -> str:
    """An opaque cursor: the sort key (reported_at, incident_id) of the last row of a page."""
    raw = orjson.dumps([reported_at.isoformat(), incident_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(text: str | None) -> list[Any] | None:
    """The sort key in a cursor made by `_encode_cursor` (None without one); ValueError if malformed."""
    if text is None:
        return None
    try:
        moment, incident_id = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        return [datetime.fromisoformat(moment), str(incident_id)]
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise ValueError("after is not a cursor this API returned (use the `next` of a page)") from None


def _authorize(request: Request, service: EngineService) -> JSONResponse | None:
    """None when the request may read; else the 401 answer (closed unless a token or the open flag)."""
    settings = service.settings
    token = settings.incidents_api_token
    if token is None:
        if settings.incidents_api_open:
            return None  # opened on purpose (INCIDENTS_API_OPEN=true)
        return JSONResponse(
            {"error": "the read API is closed: no token is configured. Set INCIDENTS_API_TOKEN and send"
             " `Authorization: Bearer <token>`, or set INCIDENTS_API_OPEN=true to open it without one"
             " (local development only)."},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )  # fmt: skip
    given = request.headers.get("authorization", "")
    scheme, _, credentials = given.partition(" ")
    # Constant time: compare digests of equal length, so neither the content nor the length leaks.
    expected = hashlib.sha256(token.get_secret_value().encode()).digest()
    offered = hashlib.sha256(credentials.strip().encode()).digest()
    if not (hmac.compare_digest(offered, expected) and scheme.lower() == "bearer"):
        return JSONResponse(
            {"error": "missing or wrong bearer token (send `Authorization: Bearer <INCIDENTS_API_TOKEN>`)"},
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

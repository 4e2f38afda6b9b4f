"""The intake's HTTP: the monitors' endpoints, liveness/readiness and /metrics.

Every refusal is a JSON body that says what is wrong (4xx) or when to come back (429/503 with
Retry-After); 2xx only once Kafka acknowledged the events.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry import propagate, trace
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from incident_intake.channels import alertmanager, grafana, pagerduty
from incident_intake.channels.common import PayloadError
from incident_intake.integrations import Integration
from incident_intake.publish import Unavailable
from incident_intake.ratelimit import TokenBucket
from incident_intake.service import IntakeService, Outcome
from incident_platform.bodies import BodyTooLarge, read_body
from incident_platform.telemetry import Providers

__all__ = ["create_app"]

_log = logging.getLogger(__name__)


class Refused(Exception):
    """An answer other than success: HTTP status, JSON body, extra headers, metrics outcome."""

    def __init__(
        self, status: int, body: dict[str, Any], outcome: str, headers: dict[str, str] | None = None
    ):
        super().__init__(body)
        self.status, self.body, self.outcome, self.headers = status, body, outcome, headers or {}


def _error(status: int, message: str, outcome: str, headers: dict[str, str] | None = None) -> Refused:
    return Refused(status, {"error": message}, outcome, headers)


async def _read_body(request: Request, limit: int) -> bytes:
    try:
        return await read_body(request, limit)
    except BodyTooLarge as exc:
        size = (
            f"is {exc.length} bytes; the limit is {limit}"
            if exc.length
            else f"is over the limit of {limit} bytes"
        )
        raise _error(413, f"the body {size} (INTAKE_MAX_BODY_BYTES)", "too_large") from None


def _json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise _error(400, f"the body is not JSON: {exc}", "bad_request") from None


def _same(offered: str, expected: str) -> bool:
    """Constant-time equality of two secrets (digests: not even the length leaks); an empty offered
    or expected value never matches."""
    same = hmac.compare_digest(
        hashlib.sha256(offered.encode()).digest(), hashlib.sha256(expected.encode()).digest()
    )
    return same and bool(offered) and bool(expected)


def _check_credentials(integration: Integration, request: Request) -> None:
    """401 unless the Authorization header carries the integration's bearer token or basic auth."""
    if integration.bearer_token is None and integration.basic is None:
        return  # a Grafana integration authenticated by its HMAC signature only
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    ok = False
    if integration.bearer_token is not None and scheme.lower() == "bearer":
        ok = _same(value.strip(), integration.bearer_token)
    elif integration.basic is not None and scheme.lower() == "basic":
        try:
            user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user, password = "", ""
        expected_user, expected_password = integration.basic
        ok = _same(user, expected_user) & _same(password, expected_password)
    if not ok:
        what = "bearer token" if integration.bearer_token is not None else "basic auth credentials"
        problem = "missing" if not header else "wrong"
        raise _error(
            401, f"{problem} {what} for integration {integration.name!r}", "unauthorized",
            {"WWW-Authenticate": "Bearer" if integration.bearer_token is not None else "Basic"},
        )  # fmt: skip


def _outcomes_body(outcomes: list[Outcome]) -> dict[str, Any]:
    return {
        "status": "accepted",
        "alerts": [{"key": o.key, "outcome": o.outcome, "incident": o.incident} for o in outcomes],
    }


def create_app(service: IntakeService, providers: Providers | None = None) -> Starlette:
    """The ASGI app; its lifespan starts and stops the service."""
    settings = service.settings
    retry_after = str(settings.intake_retry_after_seconds)
    tracer = (providers.tracer_provider if providers else trace.get_tracer_provider()).get_tracer(
        "incident_intake"
    )
    meter = providers.meter_provider.get_meter("incident_intake") if providers else None
    requests_total = meter.create_counter(
        "intake_requests_total", unit="{request}", description="Monitor requests, by integration and outcome."
    ) if meter else None  # fmt: skip
    latency = meter.create_histogram(
        "intake_request_duration_seconds", unit="s",
        description="Time from a monitor's request to its answer (Kafka's acknowledgement included).",
    ) if meter else None  # fmt: skip
    buckets: dict[str, TokenBucket] = {}

    def rate_limit(integration: Integration) -> None:
        if integration.rate_per_second is None:
            return
        bucket = buckets.get(integration.name)
        if bucket is None:
            burst = integration.rate_burst or max(1, math.ceil(integration.rate_per_second))
            bucket = buckets[integration.name] = TokenBucket(integration.rate_per_second, burst)
        wait = bucket.take()
        if wait > 0:
            raise _error(
                429, f"integration {integration.name!r} is over its rate limit "
                f"({integration.rate_per_second:g}/s); retry later", "rate_limited",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )  # fmt: skip

    async def observed(
        request: Request, channel: str, work: Callable[[dict[str, str]], Awaitable[Response]]
    ) -> Response:
        """Run `work` in the request's span; turn refusals into JSON answers; count and time it."""
        started = time.perf_counter()
        labels = {"integration": "unknown", "outcome": "accepted"}
        context = propagate.extract(dict(request.headers))
        with tracer.start_as_current_span(
            f"{request.method} {channel}", context=context, kind=trace.SpanKind.SERVER
        ) as span:
            span.set_attribute("http.request.method", request.method)
            span.set_attribute("url.path", request.url.path)
            try:
                response = await work(labels)
            except Refused as refused:
                labels["outcome"] = refused.outcome
                response = JSONResponse(refused.body, refused.status, headers=refused.headers)
            except Unavailable as exc:
                labels["outcome"] = "unavailable"
                _log.warning("answering 503: %s", exc, extra={"integration": labels["integration"]})
                body = {"error": f"{exc}; retry later"}
                if channel == "/v2/enqueue":
                    body = {"status": "unavailable", "message": f"{exc}; retry later"}
                response = JSONResponse(body, 503, headers={"Retry-After": retry_after})
            except Exception:  # a bug of ours: say so in JSON and log it, never a bare traceback
                labels["outcome"] = "error"
                _log.exception("intake request failed", extra={"integration": labels["integration"]})
                response = JSONResponse({"error": "internal error; the request was not accepted"}, 500)
            span.set_attribute("http.response.status_code", response.status_code)
            span.set_attribute("intake.integration", labels["integration"])
            span.set_attribute("intake.outcome", labels["outcome"])
        if requests_total is not None and latency is not None:
            requests_total.add(1, labels)
            latency.record(time.perf_counter() - started, {"integration": labels["integration"]})
        return response

    def webhook(kind: str, parse: Callable[..., Any]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            name = request.path_params["integration"]

            async def work(labels: dict[str, str]) -> Response:
                integration = service.integrations.get(kind, name)
                if integration is None:
                    raise _error(
                        404, f"no {kind} integration named {name!r} is configured", "unknown_integration"
                    )
                labels["integration"] = integration.name
                _check_credentials(integration, request)
                body = await _read_body(request, settings.intake_max_body_bytes)
                if kind == "grafana":
                    try:
                        grafana.check_signature(integration, request.headers, body)
                    except grafana.SignatureError as exc:
                        raise _error(401, str(exc), "unauthorized") from None
                rate_limit(integration)
                try:
                    signals = parse(integration, _json(body), _now())
                except PayloadError as exc:
                    outcome = "bad_request" if exc.status == 400 else "unprocessable"
                    raise _error(exc.status, str(exc), outcome) from None
                try:
                    outcomes = await service.handle(integration, signals)
                except PayloadError as exc:
                    raise _error(exc.status, str(exc), "unprocessable") from None
                return JSONResponse(_outcomes_body(outcomes), 200)

            return await observed(request, f"/v1/{kind}/{{integration}}", work)

        return endpoint

    async def enqueue(request: Request) -> Response:
        async def work(labels: dict[str, str]) -> Response:
            body = await _read_body(request, settings.intake_max_body_bytes)
            try:
                event = pagerduty.parse_event(_json(body))
            except Refused as refused:
                raise Refused(400, pagerduty.invalid([refused.body["error"]]), "bad_request") from None
            except pagerduty.InvalidEvent as exc:
                raise Refused(400, pagerduty.invalid(exc.errors), "bad_request") from None
            integration = service.integrations.by_routing_key(event.routing_key)
            if integration is None:
                raise Refused(400, pagerduty.invalid(["'routing_key' names no integration of this intake"]),
                              "unknown_integration")  # fmt: skip
            labels["integration"] = integration.name
            try:
                rate_limit(integration)
            except Refused as refused:
                message = "Requests for this service are arriving too quickly. Please retry later."
                raise Refused(429, {"status": "throttle event", "message": message}, refused.outcome,
                              refused.headers) from None  # fmt: skip
            try:
                signal = pagerduty.signal(integration, event, _now())
                await service.handle(integration, [signal])
            except pagerduty.InvalidEvent as exc:
                raise Refused(400, pagerduty.invalid(exc.errors), "bad_request") from None
            except PayloadError as exc:
                raise Refused(400, pagerduty.invalid([str(exc)]), "unprocessable") from None
            return JSONResponse(pagerduty.accepted(event.dedup_key), 202)

        return await observed(request, "/v2/enqueue", work)

    async def livez(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def readyz(_request: Request) -> JSONResponse:
        checks = await service.readiness()
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ready, **checks}, 200 if ready else 503)

    async def metrics(_request: Request) -> Response:
        if providers is None:
            return Response(b"", media_type="text/plain")
        body, content_type = providers.metrics_text()
        return Response(body, media_type=content_type)

    async def not_found(request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"no endpoint {request.method} {request.url.path}"}, 404)

    async def not_allowed(request: Request, _exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"{request.method} is not allowed on {request.url.path}"}, 405)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    routes = [
        Route(
            "/v1/alertmanager/{integration}", webhook("alertmanager", alertmanager.signals), methods=["POST"]
        ),
        Route("/v1/grafana/{integration}", webhook("grafana", grafana.signals), methods=["POST", "PUT"]),
        Route("/v2/enqueue", enqueue, methods=["POST"]),
        Route("/livez", livez),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
    ]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_allowed})


def _now() -> datetime:
    return datetime.now(UTC)

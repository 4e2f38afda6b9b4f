"""The notifier's probes and metrics: `/healthz`, `/readyz`, `/metrics` (Starlette)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from incident_notifier.service import Notifier


def create_http_app(notifier: Notifier) -> Starlette:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        ok, detail = await notifier.ready()
        return JSONResponse({"ready": ok, "detail": detail}, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        body, content_type = notifier.providers.metrics_text()
        return Response(body, media_type=content_type)

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics)]
    )

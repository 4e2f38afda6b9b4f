"""Alerts/s the intake accepts end to end (HTTP request → decided → acknowledged by Kafka → 2xx).

    .venv/bin/python benchmarks/bench_intake.py [--alerts 2000] [--concurrency 32] [--out FILE]

Both servers run in this process under uvicorn on loopback, against the same Kafka and PostgreSQL
(KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL, else local ones started for the run), and are driven by
the same httpx client with the same concurrency. The baseline, measured in the same run, is a bare
Starlette handler that parses a PagerDuty Events v2 trigger, builds the same CloudEvent and waits for
the same durable producer's acknowledgement: no authentication, rate limit, PostgreSQL alert-key map,
span or metric. The intake figure is PagerDuty triggers with distinct dedup keys (each a new incident:
a row locked and written in PostgreSQL and one event on Kafka). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from devstack.process import free_port
from devstack.stack import fresh_database, start_kafka, start_postgres
from incident_contracts import TOPIC_EVENTS
from incident_intake.http import create_app
from incident_intake.integrations import load_integrations
from incident_intake.publish import CONTENT_TYPE, envelope
from incident_intake.service import IntakeService
from incident_intake.settings import IntakeSettings
from incident_platform.kafka import durable_producer
from incident_platform.telemetry import create_providers

ROUTING_KEY = uuid.uuid4().hex


def trigger(i: int, run: str) -> dict[str, Any]:
    return {
        "routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": f"{run}-{i}",
        "payload": {"summary": f"disk full on db-{i}", "source": f"db-{i}", "severity": "critical"},
    }  # fmt: skip


def baseline_app(settings: IntakeSettings) -> Starlette:
    """Parse, build the same CloudEvent, send and wait: nothing else."""
    producer = durable_producer(settings)

    async def enqueue(request: Request) -> JSONResponse:
        body = orjson.loads(await request.body())
        event = envelope(
            {"id": uuid.uuid4().hex, "type": "incident.reported", "subject": f"bench-{body['dedup_key']}",
             "time": datetime.now(UTC),
             "data": {"severity": "critical", "region": "au", "summary": body["payload"]["summary"]}},
            "/channels/monitor/pagerduty/bench",
        )  # fmt: skip
        await producer.send_and_wait(TOPIC_EVENTS, orjson.dumps(event), key=event["subject"].encode(),
                                     headers=[CONTENT_TYPE])  # fmt: skip
        return JSONResponse(
            {"status": "success", "message": "Event processed", "dedup_key": body["dedup_key"]}, 202
        )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await producer.start()
        yield
        await producer.stop()

    return Starlette(routes=[Route("/v2/enqueue", enqueue, methods=["POST"])], lifespan=lifespan)


async def serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    return server, task, port


async def drive(port: int, alerts: int, concurrency: int, make: Callable[[int], dict[str, Any]]) -> float:
    """Alerts/s accepted (every answer must be 202)."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as client:
        for i in range(20):  # warm up connections and the producer (which connects in the background)
            for _ in range(100):
                if (await client.post("/v2/enqueue", json=make(-1 - i))).status_code == 202:
                    break
                await asyncio.sleep(0.1)
        queue = list(range(alerts))
        started = time.perf_counter()

        async def worker() -> None:
            while queue:
                i = queue.pop()
                answer = await client.post("/v2/enqueue", json=make(i))
                if answer.status_code != 202:
                    raise RuntimeError(f"answer {answer.status_code}: {answer.text}")

        await asyncio.gather(*[worker() for _ in range(concurrency)])
        return alerts / (time.perf_counter() - started)


async def main(alerts: int, concurrency: int) -> dict[str, Any]:
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    kafka, _ = start_kafka()
    postgres, _ = start_postgres()
    try:
        dsn = await fresh_database(postgres.url)
        settings = IntakeSettings(kafka_bootstrap_servers=kafka.url, database_url=dsn)
        config = Path(f"/tmp/bench-intake-{ROUTING_KEY}.yaml")
        config.write_text(
            f"integrations:\n  bench:\n    kind: pagerduty\n    region: au\n    routing_key: {ROUTING_KEY}\n"
        )
        providers = create_providers("bench-intake", span_exporters=[])
        service = IntakeService(
            settings, load_integrations(config), tracer=providers.tracer_provider.get_tracer("x")
        )
        results: dict[str, Any] = {"alerts": alerts, "concurrency": concurrency}
        run = uuid.uuid4().hex[:8]
        for name, app in (("baseline", baseline_app(settings)), ("intake", create_app(service, providers))):
            server, task, port = await serve(app)
            try:
                results[f"{name}_alerts_per_s"] = round(
                    await drive(port, alerts, concurrency, lambda i, tag=f"{run}{name}": trigger(i, tag))
                )
            finally:
                server.should_exit = True
                await task
        results["ratio"] = round(results["intake_alerts_per_s"] / results["baseline_alerts_per_s"], 3)
        config.unlink()
        providers.shutdown()
        return results
    finally:
        kafka.stop()
        postgres.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = asyncio.run(main(args.alerts, args.concurrency))
    text = orjson.dumps(result, option=orjson.OPT_INDENT_2).decode()
    print(text)
    if args.out:
        args.out.write_text(text + "\n")

"""CLI commands that drive the real service: `serve`, `db migrate`, `publish`."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from aiokafka import AIOKafkaProducer
from rich.console import Console

from incident_contracts import TOPIC_EVENTS, parse_event
from incident_contracts.errors import InputError
from incident_engine.adapters.postgres.migrate import migrate
from incident_engine.adapters.telemetry import inject_headers, setup_telemetry
from incident_engine.config import Settings, without_credentials
from incident_engine.timeforms import parse_instant
from incident_platform.kafka import kafka_security

console = Console(stderr=True, highlight=False, soft_wrap=True)
db_app = typer.Typer(no_args_is_help=True, help="Database administration.")

INPUT_TYPES = ("reported", "acknowledged", "investigating", "failed_over", "restored", "updated")


def serve_command(
    host: Annotated[str | None, typer.Option(help="Bind address (default INCIDENTS_HTTP_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default INCIDENTS_HTTP_PORT).")] = None,
) -> None:
    """Run the engine: consume incidents.events, fire SLA timers, publish outputs, serve HTTP."""
    import uvicorn

    from incident_engine.entrypoints.app import EngineService
    from incident_engine.entrypoints.http import create_http_app
    from incident_platform.logging_json import configure_logging

    settings = Settings()
    configure_logging(settings.incidents_log_level)
    app = create_http_app(EngineService(settings))
    uvicorn.run(
        app,
        host=host or settings.incidents_http_host,
        port=port or settings.incidents_http_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
    )


@db_app.command("migrate")
def migrate_command() -> None:
    """Apply the pending SQL migrations (safe to run from several replicas at once)."""
    dsn = Settings().database_url.get_secret_value()
    applied = asyncio.run(migrate(dsn))
    console.print(f"applied: {', '.join(applied)}" if applied else "database schema is up to date")


def build_event(
    event_type: str,
    incident: str,
    *,
    source: str,
    time: datetime | None,
    severity: str | None,
    region: str | None,
    summary: str | None,
    extra: dict[str, Any],
    event_id: str | None = None,
) -> dict[str, Any]:
    """A structured input CloudEvent of `incident.<event_type>`, validated against the contract."""
    data: dict[str, Any] = dict(extra)
    if event_type == "reported":
        data.setdefault("severity", severity)
        data.setdefault("region", region)
        data.setdefault("summary", summary or f"incident {incident}")
    event = {
        "specversion": "1.0",
        "id": event_id or str(uuid.uuid4()),
        "source": source,
        "type": f"incident.{event_type}",
        "subject": incident,
        "time": (time or datetime.now(UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": {k: v for k, v in data.items() if v is not None},
    }
    parse_event(orjson.dumps(event))  # refuse to publish what the engine would dead-letter
    return event


async def publish_events(
    bootstrap: str, events: list[dict[str, Any]], settings: Settings | None = None
) -> None:
    """Publish input events keyed by incident id, with the current trace context in the headers."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        **(kafka_security(settings) if settings else {}),
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                TOPIC_EVENTS,
                orjson.dumps(e),
                key=e["subject"].encode(),
                headers=inject_headers([("content-type", b"application/cloudevents+json")]),
            )
            for e in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def publish_command(
    event_type: Annotated[str, typer.Argument(help=f"One of: {', '.join(INPUT_TYPES)}.")],
    incident: Annotated[str, typer.Option("--incident", help="Incident id (Kafka key, CloudEvent subject).")],
    severity: Annotated[str | None, typer.Option(help="critical | high | low (reported).")] = None,
    region: Annotated[str | None, typer.Option(help="au | us | uk (reported).")] = None,
    summary: Annotated[str | None, typer.Option(help="Summary (reported).")] = None,
    time: Annotated[
        str | None, typer.Option(help="When it happened (default now; a bare date is midnight UTC).")
    ] = None,
    source: Annotated[str, typer.Option(help="Channel, e.g. /channels/phone/au.")] = "/channels/cli",
    event_id: Annotated[str | None, typer.Option("--id", help="Event id (default: a new UUID).")] = None,
    data: Annotated[str | None, typer.Option(help="Extra data fields as a JSON object.")] = None,
) -> None:
    """Publish one input event to incidents.events."""
    event_type = event_type.removeprefix("incident.")
    if event_type not in INPUT_TYPES:
        raise typer.BadParameter(f"unknown type {event_type!r}; one of {', '.join(INPUT_TYPES)}")
    try:
        extra = orjson.loads(data) if data else {}
        if not isinstance(extra, dict):
            raise typer.BadParameter("--data must be a JSON object")
        try:
            at = None if time is None else parse_instant(time)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--time") from None
        event = build_event(event_type, incident, source=source, time=at, severity=severity, region=region,
                            summary=summary, extra=extra, event_id=event_id)  # fmt: skip
    except (orjson.JSONDecodeError, InputError) as exc:
        console.print(f"[red]error:[/red] not a valid {event_type} event: {exc}")
        raise typer.Exit(2) from exc
    settings = Settings()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    telemetry = setup_telemetry("incidents-publish")
    try:
        with telemetry.tracer.start_as_current_span(f"publish incident.{event_type}") as span:
            span.set_attribute("incident.id", incident)
            asyncio.run(publish_events(settings.kafka_bootstrap_servers, [event], settings))
    finally:
        telemetry.shutdown()
    typer.echo(orjson.dumps(event).decode())


async def replay_check(
    dsn: str, settings: Settings, archive: Path | None = None
) -> tuple[int, int, list[str]]:
    """Rebuild every incident from the archive files (when given) and the log; return (events,
    incidents, differences with the live state). Archived incidents must replay to restored ones."""
    from incident_engine.adapters.archive_files import read_archive
    from incident_engine.adapters.postgres.store import create_pool
    from incident_engine.domain import PolicyRegistry, SlaDomain
    from incident_engine.replay import differences, rebuild

    archived_rows: list[Any] = []
    archived_firings: list[tuple[str, datetime, datetime | None, datetime | None]] = []
    archived: set[str] = set()
    for closed in read_archive(archive) if archive is not None else ():
        archived.add(closed.incident_id)
        archived_rows += closed.rows
        archived_firings += [(closed.incident_id, at, until, held) for at, _, until, held in closed.firings]
    pool = await create_pool(dsn)
    try:
        async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            # one snapshot: the log and the projections as of the same commit
            log_rows = await conn.fetch(
                "SELECT incident_id, seq, processed_at, envelope FROM event_log ORDER BY incident_id, seq"
            )
            firings = [
                tuple(r)
                for r in await conn.fetch(
                    "SELECT incident_id, fired_at, fire_until, breach_until FROM timer_firings"
                )
            ]
            live = {
                r["incident_id"]: r["body"]
                for r in await conn.fetch("SELECT incident_id, body FROM incidents")
            }
            timers = {
                r["incident_id"]: r["due_at"]
                for r in await conn.fetch("SELECT incident_id, due_at FROM timers")
            }
    finally:
        await pool.close()
    domain = SlaDomain(PolicyRegistry.load(settings.incidents_policy_dir), settings.incidents_default_policy)
    if archived:  # the files first; an incident in both (an interrupted archive run) is read once
        log_rows = archived_rows + [r for r in log_rows if r["incident_id"] not in archived]
        firings = archived_firings + [f for f in firings if f[0] not in archived]
    result = rebuild(domain, log_rows, firings)  # type: ignore[arg-type]
    problems = []
    for incident_id in sorted(archived - set(live)):  # archived and gone from the live projections
        incident = result.incidents.pop(incident_id, None)
        if incident is None or incident.state != "restored" or incident.next_due is not None:
            problems.append(f"{incident_id}: archived, but its replay is not a closed incident")
    problems += differences(result.incidents, live, timers)
    return result.events, len(result.incidents) + len(archived - set(live)), problems


def replay_command(archive: Path | None = None) -> None:
    """Rebuild every incident's state and timers from the event log and check them against the live ones."""
    import asyncpg

    from incident_engine.adapters.archive_files import ArchiveError

    settings = Settings()
    dsn = settings.database_url.get_secret_value()
    try:
        events, incidents, problems = asyncio.run(replay_check(dsn, settings, archive))
    except ArchiveError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        where = without_credentials(dsn)
        console.print(f"[red]error:[/red] cannot read the event log at {where}: {exc}")
        raise typer.Exit(1) from None
    console.print(f"replayed {events} events of {incidents} incidents")
    for problem in problems[:50]:
        console.print(f"[red]differs[/red] {problem}")
    if problems:
        console.print(f"[red]{len(problems)} difference(s) between the log and the live projections[/red]")
        raise typer.Exit(1)
    console.print("[green]live projections and timers equal the replay of the log[/green]")

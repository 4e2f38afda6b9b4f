"""CLI commands that drive the real service: `serve`, `db migrate`, `publish`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from aiokafka import AIOKafkaProducer
from rich.console import Console

from incident_contracts import TOPIC_EVENTS, TOPIC_REJECTED, TOPIC_STATE
from incident_contracts.build import input_event
from incident_contracts.errors import InputError
from incident_engine.adapters.postgres.migrate import migrate
from incident_engine.adapters.telemetry import inject_headers, setup_telemetry
from incident_engine.config import Settings
from incident_engine.entrypoints.watch import TopicsMissing, Verdict
from incident_engine.timeforms import parse_instant
from incident_platform.cli_errors import exit_on_unreachable, run_or_exit
from incident_platform.kafka import kafka_security

console = Console(stderr=True, highlight=False, soft_wrap=True)
db_app = typer.Typer(no_args_is_help=True, help="Database administration.")

INPUT_TYPES = ("reported", "acknowledged", "investigating", "failed_over", "restored", "updated")


def serve_command(
    host: Annotated[str | None, typer.Option(help="Bind address (default INCIDENTS_HTTP_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default INCIDENTS_HTTP_PORT).")] = None,
    startup_timeout: Annotated[
        float, typer.Option(min=0, help="Longest wait for PostgreSQL and Kafka at start, in seconds.")
    ] = 60.0,
) -> None:
    """Run the engine: consume incidents.events, fire SLA timers, publish outputs, serve HTTP."""
    import uvicorn

    from incident_engine.entrypoints.app import EngineService, StartupError, check_startup
    from incident_engine.entrypoints.http import create_http_app
    from incident_engine.gc_pause import SurvivorFreezer
    from incident_platform.logging_json import configure_logging

    settings = Settings()
    configure_logging(settings.incidents_log_level)
    log = logging.getLogger("incident_engine")
    host, port = host or settings.incidents_http_host, port or settings.incidents_http_port
    try:
        # The HTTP port first: a second engine started by mistake on a taken port must stop here,
        # before it joins the consumer group and takes partitions from the running one.
        sock = bind_http(host, port)
    except OSError as exc:
        log.error(
            "cannot start: the HTTP port %s:%d cannot be bound (%s): another engine or program listens "
            "there; stop it or choose another port (--port, INCIDENTS_HTTP_PORT)", host, port,
            exc.strerror or exc,
        )  # fmt: skip
        raise typer.Exit(2) from None
    try:  # what would stop the start, said in one log line before anything is served
        asyncio.run(check_startup(settings, startup_timeout))
    except StartupError as exc:
        sock.close()
        log.error("cannot start: %s", exc)
        raise typer.Exit(2) from None
    # Full collections scan only what was promoted since the last one (due timers wait for them).
    SurvivorFreezer().install()
    config = uvicorn.Config(
        create_http_app(EngineService(settings)),
        host=host,
        port=port,
        log_config=None,  # uvicorn's loggers go through our JSON handler (no colour codes)
        access_log=False,
        timeout_graceful_shutdown=20,
    )
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
    if not server.started:  # the engine failed to start: its reason is logged above
        raise typer.Exit(2)


def bind_http(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to host:port (IPv6 when the host is one), as uvicorn binds."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # held from now on: a bound socket alone would let a second engine bind too
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@db_app.command("migrate")
def migrate_command() -> None:
    """Apply the pending SQL migrations (safe to run from several replicas at once)."""
    dsn = Settings().database_url.get_secret_value()
    applied = run_or_exit(migrate(dsn), dsn=dsn)
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
    return input_event(
        event_type, incident, source=source, event_id=event_id or str(uuid.uuid4()), data=data, time=time
    )


async def publish_events(
    bootstrap: str, events: list[dict[str, Any]], settings: Settings | None = None
) -> list[Any]:
    """Publish input events keyed by incident id, with the current trace context in the headers;
    return the broker's record metadata of each (partition, offset)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        **(kafka_security(settings) if settings else {}),
    )
    try:
        await producer.start()
        futures = [
            await producer.send(
                TOPIC_EVENTS,
                orjson.dumps(e),
                key=e["subject"].encode(),
                headers=inject_headers([("content-type", b"application/cloudevents+json")]),
            )
            for e in events
        ]
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()


# exit codes of `publish --wait`
EXIT_REJECTED = 3
EXIT_NO_VERDICT = 4
_UPDATED_WAIT = 3.0  # an accepted incident.updated emits nothing: only a rejection can be waited for


async def publish_and_wait(settings: Settings, event: dict[str, Any], timeout: float) -> Verdict | None:
    """Publish `event`, then wait up to `timeout` seconds for the engine's verdict on it (None: none came).

    The follower is positioned before the event is sent, so the verdict cannot be missed."""
    from incident_engine.entrypoints.watch import follow, open_follower, verdict_ids, verdict_of

    consumer = await open_follower(settings, [TOPIC_STATE, TOPIC_REJECTED])
    try:
        (sent,) = await publish_events(settings.kafka_bootstrap_servers, [event], settings)
        changes, rejections = verdict_ids(event, sent.partition, sent.offset)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async for _, output in follow(consumer, poll_ms=100):
            verdict = verdict_of(output, changes, rejections) if output else None
            if verdict is not None:
                return verdict
            if loop.time() >= deadline:
                return None
    finally:
        await consumer.stop()
    return None


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
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait/--no-wait",
            help="Wait for the engine's verdict (state change or rejection); exit 3 when rejected,"
            " 4 when none came. Default: wait when stdout is a terminal.",
        ),
    ] = None,
    wait_timeout: Annotated[
        float, typer.Option(min=0.1, help="Longest wait for the verdict, in seconds.")
    ] = 10.0,
) -> None:
    """Publish one input event to incidents.events (and wait for the engine's verdict on it)."""
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
    if wait is None:
        wait = sys.stdout.isatty()
    settings = Settings()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its errors are said once, below
    telemetry = setup_telemetry("incidents-publish")
    timeout = min(wait_timeout, _UPDATED_WAIT) if event_type == "updated" else wait_timeout
    verdict: Verdict | None = None
    try:
        with (
            exit_on_unreachable(bootstrap=settings.kafka_bootstrap_servers),
            telemetry.tracer.start_as_current_span(f"publish incident.{event_type}") as span,
        ):
            span.set_attribute("incident.id", incident)
            if wait:
                verdict = asyncio.run(publish_and_wait(settings, event, timeout))
            else:
                asyncio.run(publish_events(settings.kafka_bootstrap_servers, [event], settings))
    except TopicsMissing as exc:
        console.print(f"[red]error:[/red] cannot wait for the verdict: {exc}; or publish with --no-wait")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        console.print("interrupted: the event may have been published; see `incidents tail --incident ID`")
        raise typer.Exit(130) from None
    finally:
        telemetry.shutdown()
    typer.echo(orjson.dumps(event).decode())
    if wait:
        _print_verdict(verdict, event_type, timeout)


def _print_verdict(verdict: Verdict | None, event_type: str, timeout: float) -> None:
    """Say what the engine answered; exit 3 on a rejection, 4 when no answer came in time."""
    if verdict is None:
        if event_type == "updated":
            console.print(
                f"no rejection within {timeout:g} s (an accepted incident.updated changes no state,"
                " so the engine emits nothing for it)"
            )
            return
        console.print(
            f"[yellow]no verdict within {timeout:g} s:[/yellow] is the engine running and caught up"
            " (`incidents serve`, /readyz)? An event whose source and id it already processed is dropped"
            " without an answer. Raise --wait-timeout, or follow the outputs with `incidents tail`."
        )
        raise typer.Exit(EXIT_NO_VERDICT)
    if verdict.accepted:
        console.print(f"[green]{verdict.describe()}[/green]")
        return
    console.print(f"[red]{verdict.describe()}[/red]")
    raise typer.Exit(EXIT_REJECTED)


async def replay_check(
    dsn: str, settings: Settings, archive: Path | None = None
) -> tuple[int, int, list[str]]:
    """Rebuild every incident from the archive files (when given) and the log; return (events,
    incidents, differences with the live state). Archived incidents must replay to restored ones."""
    from incident_engine.adapters.archive_files import read_archive
    from incident_engine.adapters.postgres.store import create_pool
    from incident_engine.domain import PolicyRegistry, SlaDomain
    from incident_engine.replay import differences, rebuild

    # the policies first: a broken file is reported before anything is read
    domain = SlaDomain(PolicyRegistry.load(settings.incidents_policy_dir), settings.incidents_default_policy)
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
    from incident_engine.adapters.archive_files import ArchiveError
    from incident_engine.domain import PolicyError

    settings = Settings()
    dsn = settings.database_url.get_secret_value()
    try:
        with exit_on_unreachable(dsn=dsn):
            events, incidents, problems = asyncio.run(replay_check(dsn, settings, archive))
    except ArchiveError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except PolicyError as exc:
        console.print(f"[red]error:[/red] policies: {exc}")
        raise typer.Exit(2) from None
    console.print(f"replayed {events} events of {incidents} incidents")
    for problem in problems[:50]:
        console.print(f"[red]differs[/red] {problem}")
    if problems:
        console.print(f"[red]{len(problems)} difference(s) between the log and the live projections[/red]")
        raise typer.Exit(1)
    console.print("[green]live projections and timers equal the replay of the log[/green]")

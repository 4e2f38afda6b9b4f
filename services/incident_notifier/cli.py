"""`incidents notify`: run the notifier (or `--check` its configuration)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from incident_notifier.config import ConfigError, RoutingConfig, load
from incident_notifier.settings import NotifierSettings


def _fail(message: str) -> None:
    typer.echo(f"incidents notify: {message}", err=True)
    raise typer.Exit(2)


notify_app = typer.Typer(
    invoke_without_command=True,
    add_completion=False,
    help="Deliver warnings, breaches and failover orders to webhooks, Slack, email and PagerDuty.",
)


@notify_app.callback()
def notify_command(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", help="Routing YAML (default INCIDENTS_NOTIFIER_CONFIG).")
    ] = None,
    port: Annotated[
        int | None, typer.Option(help="Probe/metrics port (default INCIDENTS_NOTIFIER_HTTP_PORT).")
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Validate the configuration and its secrets, then exit.")
    ] = False,
) -> None:
    """Deliver warnings, breaches and failover orders to webhooks, Slack, email and PagerDuty."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        settings = NotifierSettings()
    except Exception as exc:  # pydantic's ValidationError: one line per field
        _fail(f"invalid settings: {exc}".replace("\n", " "))
    path = config or settings.incidents_notifier_config
    try:
        routing = load(path)
    except ConfigError as exc:
        _fail(str(exc))
    problems = routing.check_secrets()
    if problems:
        _fail(f"{path}: " + "; ".join(problems))
    if check:
        routes = len(routing.routes)
        typer.echo(f"{path}: {len(routing.destinations)} destination(s), {routes} route(s), secrets readable")
        return
    if port is not None:
        settings.incidents_notifier_http_port = port
    code = asyncio.run(_run(settings, routing))
    raise typer.Exit(code)


@notify_app.command("resend")
def resend_command(
    destination: Annotated[
        str | None,
        typer.Option("--destination", help="Only the dead deliveries of this destination (default: all)."),
    ] = None,
) -> None:
    """Send dead deliveries again, once their cause is fixed (a new failure: a dead letter, new id)."""
    try:
        settings = NotifierSettings()
    except Exception as exc:
        _fail(f"invalid settings: {exc}".replace("\n", " "))
    try:
        count = asyncio.run(_resend(settings, destination))
    except (TimeoutError, OSError) as exc:
        _fail(f"cannot reach PostgreSQL: {type(exc).__name__}: {exc}; check DATABASE_URL")
    except Exception as exc:  # asyncpg's errors (authentication, a missing database)
        _fail(f"PostgreSQL: {type(exc).__name__}: {exc}; check DATABASE_URL")
    which = f"of {destination!r} " if destination else ""
    typer.echo(f"{count} dead deliveries {which}pending again; a running notifier sends them now")


async def _resend(settings: NotifierSettings, destination: str | None) -> int:
    from incident_notifier.store import DeliveryStore, migrate_notifier
    from incident_platform.postgres import create_pool

    dsn = settings.database_url.get_secret_value()
    await migrate_notifier(dsn)
    pool = await create_pool(dsn, max_size=1, **settings.pool_timeouts())  # type: ignore[arg-type]
    try:
        return await DeliveryStore(pool).resend(destination)
    finally:
        await pool.close()


class _Server:
    """uvicorn's Server, stopping on SIGTERM/SIGINT without re-raising the signal afterwards (the
    notifier closes its clients first)."""

    def __init__(self, app: object, host: str, port: int) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                handlers = {
                    sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
                }
                try:
                    yield
                finally:
                    for sig, handler in handlers.items():
                        signal.signal(sig, handler)

        self.server = Server(
            uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, lifespan="off")  # type: ignore[arg-type]
        )


async def _run(settings: NotifierSettings, routing: RoutingConfig) -> int:
    from incident_notifier.http import create_http_app
    from incident_notifier.service import Notifier
    from incident_platform.logging_json import configure_logging
    from incident_platform.settings import without_credentials
    from incident_platform.telemetry import create_providers, install_globally

    configure_logging(settings.incidents_log_level)
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))  # a line per POST
    providers = create_providers("incident-notifier")
    install_globally(providers)
    notifier = Notifier(settings, routing, providers)
    try:
        await notifier.start()
    except Exception as exc:
        await notifier.stop()
        dsn = without_credentials(settings.database_url.get_secret_value())
        print(
            f"incidents notify: cannot start: {type(exc).__name__}: {exc} "
            f"(Kafka {settings.kafka_bootstrap_servers}, PostgreSQL {dsn}); check they are reachable",
            file=sys.stderr,
        )
        return 2
    server = _Server(
        create_http_app(notifier),
        settings.incidents_notifier_http_host,
        settings.incidents_notifier_http_port,
    )
    try:
        await server.server.serve()
    finally:
        await notifier.stop()
        providers.shutdown()
    return 0

"""`incidents intake`: the monitors' HTTP intake (Alertmanager, Grafana, PagerDuty Events v2), the
phone lines' webhooks on the same HTTP, and the support mailbox's SMTP server when enabled."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["intake_app"]

console = Console(stderr=True, highlight=False, soft_wrap=True)
intake_app = typer.Typer(
    no_args_is_help=False, invoke_without_command=True,
    help="The intake: monitors (Alertmanager, Grafana, PagerDuty Events v2), the support mailbox (SMTP) "
    "and the phone lines (Twilio webhooks).",
)  # fmt: skip


def _settings(integrations: Path | None) -> object:
    from pydantic import ValidationError

    from incident_intake.settings import IntakeSettings

    try:
        settings = IntakeSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        console.print(f"[red]error:[/red] setting {first['loc'][0]}: {first['msg']}")
        raise typer.Exit(2) from None
    if integrations is not None:
        settings.intake_integrations_file = integrations
    return settings


def _integrations_or_exit(path: Path) -> object:
    from incident_intake.integrations import IntegrationsError, load_integrations

    try:
        return load_integrations(path)
    except IntegrationsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@intake_app.callback()
def intake_command(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Bind address (default INTAKE_HTTP_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default INTAKE_HTTP_PORT).")] = None,
    integrations: Annotated[
        Path | None, typer.Option(help="Integrations YAML (default INTAKE_INTEGRATIONS_FILE).")
    ] = None,
) -> None:
    """Serve the monitors' endpoints: POST /v1/alertmanager/{integration}, /v1/grafana/{integration},
    /v2/enqueue (PagerDuty Events v2); the phone lines' POST /v1/voice/{line}, /v1/sms/{line}; the
    support mailbox over SMTP when INTAKE_SMTP_ENABLED. Answers 2xx (SMTP 250) only once Kafka
    acknowledged the events."""
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from incident_intake.http import create_app
    from incident_intake.people_app import with_people
    from incident_intake.people_cli import people_settings_or_exit
    from incident_intake.service import IntakeService
    from incident_intake.settings import IntakeSettings
    from incident_platform.cli_errors import postgres_unreachable
    from incident_platform.logging_json import configure_logging
    from incident_platform.telemetry import create_providers, install_globally

    settings = _settings(integrations)
    assert isinstance(settings, IntakeSettings)
    loaded = _integrations_or_exit(settings.intake_integrations_file)
    people = people_settings_or_exit()  # the support mailbox and the phone lines (README)
    configure_logging(settings.incidents_log_level)
    providers = create_providers("incident-intake")
    install_globally(providers)
    tracer = providers.tracer_provider.get_tracer("incident_intake")
    service = IntakeService(settings, loaded, tracer=tracer)  # type: ignore[arg-type]
    try:
        asyncio.run(_check_postgres(settings))
    except Exception as exc:
        dsn = settings.database_url.get_secret_value()
        console.print(f"[red]error:[/red] {postgres_unreachable(dsn, exc)}")
        raise typer.Exit(2) from None
    try:
        uvicorn.run(
            with_people(create_app(service, providers), people, providers.tracer_provider),
            host=host or settings.intake_http_host,
            port=port or settings.intake_http_port,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=10,
        )
    finally:
        providers.shutdown()


async def _check_postgres(settings: object) -> None:
    from incident_intake.settings import IntakeSettings
    from incident_intake.store import migrate_intake

    assert isinstance(settings, IntakeSettings)
    await asyncio.wait_for(migrate_intake(settings.database_url.get_secret_value()), 30)


@intake_app.command("check")
def check_command(
    integrations: Annotated[Path, typer.Argument(help="The integrations YAML file to validate.")],
) -> None:
    """Validate an integrations file (schema, secrets resolvable) and list its integrations."""
    from incident_intake.integrations import Integrations

    loaded = _integrations_or_exit(integrations)
    assert isinstance(loaded, Integrations)
    for integration in loaded.by_name.values():
        where = (
            "/v2/enqueue" if integration.kind == "pagerduty" else f"/v1/{integration.kind}/{integration.name}"
        )
        typer.echo(f"{integration.name}: {integration.kind} at {where}, source {integration.source}")

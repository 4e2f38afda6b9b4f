"""`incidents intake-people`: the support mailbox and the phone lines, from the environment."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg
import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console

__all__ = ["intake_people_command"]

console = Console(stderr=True, highlight=False, soft_wrap=True)


def intake_people_command() -> None:
    """Run the intake's SMTP server (INTAKE_SMTP_*) and phone webhooks (INTAKE_PHONE_*)."""
    from incident_intake.people_app import serve_people
    from incident_intake.people_settings import PeopleSettings
    from incident_platform.logging_json import configure_logging
    from incident_platform.settings import without_credentials
    from incident_platform.telemetry import create_providers, install_globally

    try:
        settings = PeopleSettings()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        console.print(
            f"[red]error:[/red] setting {where.upper()}: {first['msg']}"
            " (see the README, section Intake: email and phone)"
        )
        raise typer.Exit(2) from None
    except SettingsError as exc:  # a JSON setting (mailboxes, lines, users) that is not JSON
        console.print(
            f"[red]error:[/red] {exc}: not valid JSON (see the README, section Intake: email and phone)"
        )
        raise typer.Exit(2) from None
    configure_logging(settings.incidents_log_level)
    providers = create_providers("incident-intake")
    install_globally(providers)
    dsn = without_credentials(settings.database_url.get_secret_value())
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_people(settings))
    except (OSError, asyncpg.PostgresError) as exc:
        console.print(
            f"[red]error:[/red] the people intake cannot start: {exc}. Check that PostgreSQL ({dsn}) is up"
            f" and ports {settings.intake_smtp_port} (SMTP), {settings.intake_phone_http_port} (HTTP)"
            " are free."
        )
        raise typer.Exit(2) from None
    except ValueError as exc:  # e.g. STARTTLS required without a certificate
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    finally:
        providers.shutdown()

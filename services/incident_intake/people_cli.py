"""What `incidents intake` needs of the people channels: their settings, or a one-line error."""

from __future__ import annotations

import socket

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError
from rich.console import Console

from incident_intake.people_settings import PeopleSettings

__all__ = ["people_settings_or_exit"]

console = Console(stderr=True, highlight=False, soft_wrap=True)


def people_settings_or_exit() -> PeopleSettings:
    """The email and phone settings from the environment; exit 2 with one line when one is wrong."""
    try:
        settings = PeopleSettings()
        tls = settings.intake_smtp_tls_certfile is not None and settings.intake_smtp_tls_keyfile is not None
        if settings.intake_smtp_enabled and settings.intake_smtp_require_starttls and not tls:
            raise ValueError("INTAKE_SMTP_REQUIRE_STARTTLS needs INTAKE_SMTP_TLS_CERTFILE and _KEYFILE")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]).upper()
        console.print(f"[red]error:[/red] setting {where}: {first['msg']} (README, Intake: email and phone)")
        raise typer.Exit(2) from None
    except SettingsError as exc:  # a JSON setting (mailboxes, lines, users) that is not JSON
        console.print(f"[red]error:[/red] {exc}: not valid JSON (README, Intake: email and phone)")
        raise typer.Exit(2) from None
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if settings.intake_smtp_enabled:
        _check_bindable(settings.intake_smtp_host, settings.intake_smtp_port)
    return settings


def _check_bindable(host: str, port: int) -> None:
    """Exit with one line now rather than a failed startup later when the SMTP port is taken."""
    try:
        with socket.create_server((host, port), reuse_port=False):
            pass
    except OSError as exc:
        console.print(
            f"[red]error:[/red] the SMTP server cannot listen on {host}:{port} ({exc.strerror or exc});"
            " set INTAKE_SMTP_HOST / INTAKE_SMTP_PORT"
        )
        raise typer.Exit(2) from None

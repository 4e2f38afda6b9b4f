"""The configuration table of the README, generated from the Settings model (and checked by a test)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr, TypeAdapter
from pydantic_settings import BaseSettings

from incident_engine.config import REPO_ROOT, Settings

README = REPO_ROOT / "README.md"
START, END = "<!-- config:start -->", "<!-- config:end -->"
# The notifier's own settings (beyond the shared Kafka/PostgreSQL/log ones of the table above).
NOTIFIER_START, NOTIFIER_END = "<!-- notifier-config:start -->", "<!-- notifier-config:end -->"


def markdown_table(settings: type[BaseSettings] = Settings, skip: frozenset[str] = frozenset()) -> str:
    """One row per environment variable: name, default, meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in settings.model_fields.items():
        if name in skip:
            continue
        default = field.default
        if isinstance(default, SecretStr):
            default = default.get_secret_value()
        if isinstance(default, Path):
            default = default.relative_to(REPO_ROOT) if default.is_relative_to(REPO_ROOT) else default
        if isinstance(default, timedelta):
            default = TypeAdapter(timedelta).dump_python(default, mode="json")  # ISO 8601, as set
        shown = "–" if default is None else f"`{default}`"
        rows.append(f"| `{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)


def notifier_table() -> str:
    """The table of the notifier's own settings."""
    from incident_notifier.settings import NotifierSettings
    from incident_platform.settings import PlatformSettings

    return markdown_table(NotifierSettings, frozenset(PlatformSettings.model_fields))


def readme_with_table(text: str) -> str:
    """The README text with its configuration sections regenerated."""
    for start, end, table in (
        (START, END, markdown_table()),
        (NOTIFIER_START, NOTIFIER_END, notifier_table()),
    ):
        block = f"{start}\n{table}\n{end}"
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _m, b=block: b, text, flags=re.S)  # type: ignore[misc]
    return text


def config_command(
    markdown: Annotated[bool, typer.Option(help="Print the README table of every variable.")] = False,
    write_readme: Annotated[bool, typer.Option(help="Regenerate the table in README.md.")] = False,
) -> None:
    """Show the effective configuration (secrets masked), or the documentation table."""
    if write_readme:
        README.write_text(readme_with_table(README.read_text()))
        typer.echo("README.md configuration table regenerated")
    elif markdown:
        typer.echo(markdown_table())
    else:
        for name, value in Settings().model_dump().items():
            typer.echo(f"{name.upper()}={value}")

"""The configuration table of the README, generated from the Settings model (and checked by a test)."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from pydantic import SecretStr, TypeAdapter

from incident_engine.config import REPO_ROOT, Settings

README = REPO_ROOT / "README.md"
START, END = "<!-- config:start -->", "<!-- config:end -->"


def markdown_table() -> str:
    """One row per environment variable: name, default, meaning."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
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


def readme_with_table(text: str) -> str:
    """The README text with its configuration section regenerated."""
    block = f"{START}\n{markdown_table()}\n{END}"
    return re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _m: block, text, flags=re.S)


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

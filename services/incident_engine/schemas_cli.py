"""`incidents schemas export|check`: regenerate or verify the JSON Schemas in `schemas/`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from incident_contracts.schema_export import REGENERATE_HINT, export_schemas, stale_schemas
from incident_engine.domain.policy import REPO_ROOT

schemas_app = typer.Typer(no_args_is_help=True, help="JSON Schemas of the event contract.")
SCHEMA_DIR = REPO_ROOT / "schemas"
Directory = Annotated[Path, typer.Option("--dir", help="Folder of the schema files.")]


@schemas_app.command("export")
def export_command(directory: Directory = SCHEMA_DIR) -> None:
    """Write the JSON Schema of every input and output event type."""
    for path in export_schemas(directory):
        typer.echo(str(path))


@schemas_app.command("check")
def check_command(directory: Directory = SCHEMA_DIR) -> None:
    """Fail when a schema file is missing or differs from the models."""
    stale = stale_schemas(directory)
    if stale:
        typer.echo(f"stale schemas: {', '.join(stale)}; {REGENERATE_HINT}", err=True)
        raise typer.Exit(1)
    typer.echo("schemas are up to date")

"""`incidents schemas export|check`: regenerate or verify the JSON Schemas in `schemas/`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from incident_contracts.schema_export import REGENERATE_HINT, export_schemas, stale_schemas
from incident_engine.domain.lifecycle import mermaid
from incident_engine.domain.policy import REPO_ROOT

schemas_app = typer.Typer(no_args_is_help=True, help="JSON Schemas of the event contract.")
SCHEMA_DIR = REPO_ROOT / "schemas"
README = REPO_ROOT / "README.md"
DIAGRAM_START, DIAGRAM_END = "<!-- lifecycle:start -->", "<!-- lifecycle:end -->"
NOTIFIER_SCHEMA = "notifier.schema.json"  # the notifier's routing file (services/incident_notifier/config.py)


def notifier_schema() -> bytes:
    """The JSON Schema of the notifier's routing file, as committed in `schemas/`."""
    import orjson

    from incident_notifier.config import SCHEMA

    return orjson.dumps(SCHEMA, option=orjson.OPT_INDENT_2) + b"\n"


Directory = Annotated[Path, typer.Option("--dir", help="Folder of the schema files.")]


@schemas_app.command("export")
def export_command(directory: Directory = SCHEMA_DIR) -> None:
    """Write the JSON Schema of every event type, and the lifecycle diagram into the README."""
    for path in export_schemas(directory):
        typer.echo(str(path))
    notifier = directory / NOTIFIER_SCHEMA
    notifier.write_bytes(notifier_schema())
    typer.echo(str(notifier))
    README.write_text(with_lifecycle_diagram(README.read_text()))
    typer.echo(f"{README} (lifecycle diagram)")


def with_lifecycle_diagram(readme: str) -> str:
    """`readme` with the generated lifecycle diagram between its lifecycle markers."""
    head, found, rest = readme.partition(DIAGRAM_START)
    _, found_end, tail = rest.partition(DIAGRAM_END)
    if not (found and found_end):
        raise ValueError(f"README has no {DIAGRAM_START} ... {DIAGRAM_END} markers")
    return f"{head}{DIAGRAM_START}\n{mermaid()}\n{DIAGRAM_END}{tail}"


@schemas_app.command("check")
def check_command(directory: Directory = SCHEMA_DIR) -> None:
    """Fail when a schema file is missing or differs from the models."""
    stale = stale_schemas(directory)
    notifier = directory / NOTIFIER_SCHEMA
    if not notifier.exists() or notifier.read_bytes() != notifier_schema():
        stale.append(NOTIFIER_SCHEMA)
    if stale:
        typer.echo(f"stale schemas: {', '.join(stale)}; {REGENERATE_HINT}", err=True)
        raise typer.Exit(1)
    typer.echo("schemas are up to date")

"""`incidents openapi`: the HTTP API's OpenAPI document (committed under schemas/, drift-tested)."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer

from incident_engine.config import REPO_ROOT, Settings

OPENAPI_FILE = REPO_ROOT / "schemas" / "openapi.json"


def render() -> bytes:
    """The committed form of the document: sorted keys, two-space indent, trailing newline."""
    from incident_engine.entrypoints.app import EngineService
    from incident_engine.entrypoints.http import create_http_app, openapi_document

    app = create_http_app(EngineService(Settings()))
    return (
        orjson.dumps(openapi_document(app.routes), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
    )


def openapi_command(write: Annotated[bool, typer.Option(help="Write schemas/openapi.json.")] = False) -> None:
    """Print (or write) the OpenAPI document of the engine's HTTP API."""
    text = render()
    if write:
        OPENAPI_FILE.write_bytes(text)
        typer.echo(f"wrote {OPENAPI_FILE}", err=True)
    else:
        typer.echo(text.decode(), nl=False)

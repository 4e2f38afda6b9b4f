"""Write the JSON Schemas of every input and output CloudEvent to `schemas/` (and check they are current)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from incident_contracts.models import INPUT_MODELS, OUTPUT_MODELS, CloudEvent, model_type

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REGENERATE_HINT = "run `incidents schemas export` (or `python -m incident_contracts.schema_export`)"


def schema_documents() -> dict[str, bytes]:
    """File name -> JSON Schema text of every event type, as `schemas/` should hold them."""
    documents: dict[str, bytes] = {}
    for model in (*INPUT_MODELS, *OUTPUT_MODELS):
        documents[f"{model_type(model)}.schema.json"] = _render(_schema_of(model))
    return documents


def _schema_of(model: type[CloudEvent]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    event_type = model_type(model)
    return {"$schema": SCHEMA_DIALECT, "$id": f"urn:incident-sla-engine:schema:{event_type}", **schema}


def _render(schema: dict[str, Any]) -> bytes:
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def export_schemas(directory: Path) -> list[Path]:
    """Write every event schema into `directory`; return the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in schema_documents().items():
        path = directory / name
        path.write_bytes(text)
        written.append(path)
    return written


def stale_schemas(directory: Path) -> list[str]:
    """Names of the schema files in `directory` that are missing or differ from the models."""
    stale = []
    for name, text in schema_documents().items():
        path = directory / name
        if not path.exists() or path.read_bytes() != text:
            stale.append(name)
    return stale


if __name__ == "__main__":  # pragma: no cover
    for written_path in export_schemas(Path("schemas")):
        print(written_path)

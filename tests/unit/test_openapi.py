"""The committed OpenAPI document is generated from the HTTP routes and must not drift."""

from __future__ import annotations

import orjson
import pytest

from incident_engine.entrypoints.openapi_cli import OPENAPI_FILE, render

pytestmark = pytest.mark.unit


def test_committed_openapi_matches_the_routes() -> None:
    assert OPENAPI_FILE.read_bytes() == render(), (
        "schemas/openapi.json is stale: run `incidents openapi --write`"
    )


def test_read_api_is_documented_with_its_token() -> None:
    document = orjson.loads(OPENAPI_FILE.read_bytes())
    assert set(document["paths"]) == {
        "/healthz",
        "/readyz",
        "/metrics",
        "/incidents",
        "/incidents/{incident_id}",
    }
    for path in ("/incidents", "/incidents/{incident_id}"):
        operation = document["paths"][path]["get"]
        assert operation["security"] == [{"bearer": []}]
        assert "401" in operation["responses"]

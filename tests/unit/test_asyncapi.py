"""The committed AsyncAPI document is what FastStream generates from the contract's models."""

from __future__ import annotations

import orjson
import pytest

from incident_engine.entrypoints.asyncapi import ASYNCAPI_FILE, render

pytestmark = pytest.mark.unit


def test_committed_asyncapi_matches_the_code() -> None:
    assert ASYNCAPI_FILE.read_bytes() == render(), (
        "schemas/asyncapi.json is stale: run `incidents asyncapi --write`"
    )


def test_document_names_every_contract_channel_and_type() -> None:
    document = orjson.loads(ASYNCAPI_FILE.read_bytes())
    assert set(document["channels"]) == {"incidents.events", "incidents.state", "incidents.breaches",
                                         "incidents.rejected", "incidents.notifications.dead"}  # fmt: skip
    text = ASYNCAPI_FILE.read_text()
    for event_type in (
        "incident.reported",
        "incident.sla.breached",
        "incident.failover.required",
        "incident.rejected",
        "incident.notification.dead",
    ):
        assert event_type in text

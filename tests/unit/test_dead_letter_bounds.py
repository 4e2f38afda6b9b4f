"""A dead letter always fits its topic: it quotes its original only up to a bound, with size and digest."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest

from incident_contracts import DecodeError
from incident_engine.domain import reject_input
from incident_engine.domain.outputs import DETAIL_LIMIT, ORIGINAL_QUOTE_LIMIT
from incident_engine.entrypoints.app import OUTPUT_MAX_MESSAGE_BYTES

pytestmark = pytest.mark.unit

NOW = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas" / "incident.rejected.schema.json").read_text()
)


def _check(payload: bytes) -> dict[str, object]:
    assert len(payload) < OUTPUT_MAX_MESSAGE_BYTES // 2  # room for headers and the envelope to spare
    document = json.loads(payload)
    jsonschema.validate(document, SCHEMA)
    data: dict[str, object] = document["data"]
    return data


def test_a_large_text_original_is_quoted_up_to_the_bound_with_its_size_and_digest() -> None:
    raw = b'"' * 1_000_000  # every byte doubles when escaped in JSON: 2 MB unbounded
    rejection = reject_input(DecodeError("not JSON"), raw, NOW, key=b"INC-1", origin="incidents.events/0/7")
    data = _check(rejection.to_json_bytes())
    assert data["original"] == '"' * ORIGINAL_QUOTE_LIMIT and data["original_encoding"] == "utf-8"
    assert data["original_size"] == len(raw)
    assert data["original_sha256"] == hashlib.sha256(raw).hexdigest()


def test_a_cut_never_splits_a_character_and_binary_is_quoted_in_base64() -> None:
    raw = b"a" + "é".encode() * ORIGINAL_QUOTE_LIMIT  # the bound falls inside a two-byte character
    data = _check(reject_input(DecodeError("x"), raw, NOW).to_json_bytes())
    assert data["original"] == "a" + "é" * ((ORIGINAL_QUOTE_LIMIT - 1) // 2)
    binary = b"\xff" * (3 * ORIGINAL_QUOTE_LIMIT)
    data = _check(reject_input(DecodeError("x"), binary, NOW).to_json_bytes())
    assert data["original_encoding"] == "base64" and data["original_size"] == len(binary)
    assert base64.b64decode(str(data["original"])) == binary[:ORIGINAL_QUOTE_LIMIT]


def test_a_small_original_is_quoted_whole_and_a_long_detail_is_bounded() -> None:
    data = _check(reject_input(DecodeError("d" * 100_000), b"{oops", NOW).to_json_bytes())
    assert data["original"] == "{oops" and "original_size" not in data and "original_sha256" not in data
    assert len(str(data["detail"])) < DETAIL_LIMIT + 100

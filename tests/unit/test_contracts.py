"""The wire contract: parsing (structured and binary mode), rejections of bad bytes, schemas in sync."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incident_contracts import DecodeError, SchemaError, parse_event, stable_id
from incident_contracts.constants import OUTPUT_TOPICS, TOPICS
from incident_contracts.envelope import OutputEvent, encode_output_lines
from incident_contracts.schema_export import REGENERATE_HINT, stale_schemas
from incident_engine.domain import reject_input
from tests.unit.sla_helpers import wire

pytestmark = pytest.mark.unit

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
NOW = datetime(2025, 6, 11, 10, 0, tzinfo=UTC)


def test_schemas_are_in_sync_with_the_models() -> None:
    stale = stale_schemas(SCHEMAS)
    assert not stale, f"JSON Schemas out of date: {', '.join(stale)}; {REGENERATE_HINT}"


def test_topic_names() -> None:
    assert TOPICS == ("incidents.events", "incidents.state", "incidents.breaches", "incidents.rejected")
    assert set(OUTPUT_TOPICS.values()) == set(TOPICS[1:])


def test_structured_event_is_parsed() -> None:
    event = parse_event(
        wire("reported", "2025-06-11T20:00:00+10:00", severity="low", region="au", summary="s")
    )
    assert event.type == "incident.reported" and event.subject == "INC-1"
    assert event.time == NOW  # the offset is kept; the domain works in UTC
    assert event.data.severity == "low"  # type: ignore[attr-defined]


def test_extension_attributes_are_kept() -> None:
    raw = json.loads(wire("acknowledged", "2025-06-11T10:00:00Z"))
    raw["traceparent"] = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert parse_event(json.dumps(raw).encode()).model_extra == {"traceparent": raw["traceparent"]}


def test_binary_mode() -> None:
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", b"e-7"),
        ("ce_source", b"/channels/phone/uk"),
        ("ce_type", b"incident.failed_over"),
        ("ce_subject", b"INC-9"),
        ("ce_time", b"2025-06-11T11:00:00+01:00"),
        ("content-type", b"application/json; charset=utf-8"),
    ]
    event = parse_event(b'{"site": "dc-2"}', headers)
    assert (event.id, event.subject, event.time) == ("e-7", "INC-9", NOW)
    assert event.data.site == "dc-2"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("raw", "error", "detail"),
    [
        (b"\xff\xfe", DecodeError, "not JSON"),
        (b"{not json", DecodeError, "not JSON"),
        (b"[1, 2]", DecodeError, "expected a JSON object"),
        (b'{"type": "incident.exploded"}', SchemaError, "type: Input tag 'incident.exploded'"),
        (
            wire("reported", "2025-06-11T10:00:00Z", severity="urgent", region="au", summary="s"),
            SchemaError,
            "data.severity: Input should be 'critical', 'high' or 'low' (got 'urgent')",
        ),
        (wire("acknowledged", "2025-06-11T10:00:00"), SchemaError, "time: Input should have timezone info"),
        (wire("updated", "2025-06-11T10:00:00Z"), SchemaError, "data: Field required"),
        (wire("acknowledged", "2025-06-11T10:00:00Z", mood="x"), SchemaError, "data.mood: Extra inputs"),
    ],
)
def test_bad_input(raw: bytes, error: type[Exception], detail: str) -> None:
    with pytest.raises(error) as caught:
        parse_event(raw)
    assert detail in str(caught.value)


def test_rejection_of_undecodable_bytes() -> None:
    raw = b"\xff\x00garbage"
    with pytest.raises(DecodeError) as caught:
        parse_event(raw)
    origin = "incidents.events/3/1200"
    rejection = reject_input(caught.value, raw, NOW, key=b"INC-5", origin=origin)
    assert rejection.topic == "incidents.rejected" and rejection.subject == "INC-5"
    assert rejection.data["reason"] == "decode" and rejection.data["original_encoding"] == "base64"
    assert base64.b64decode(rejection.data["original"]) == raw
    assert rejection.id == reject_input(caught.value, raw, NOW, key=b"INC-5", origin=origin).id
    _validate(rejection.to_json_bytes())


def test_rejection_of_schema_invalid_event_uses_its_id_and_subject() -> None:
    raw = wire("reported", "2025-06-11T10:00:00Z", subject="INC-8", event_id="e-8", severity="x", region="au")
    with pytest.raises(SchemaError) as caught:
        parse_event(raw)
    rejection = reject_input(caught.value, raw, NOW)
    assert rejection.subject == "INC-8" and rejection.data["original"] == raw.decode()
    assert rejection.id == stable_id("e-8/rejected/schema")
    without_subject = reject_input(DecodeError("empty"), b"", NOW)
    assert without_subject.subject is None and "subject" not in without_subject.to_json()
    _validate(without_subject.to_json_bytes())


def test_stable_id_is_deterministic_and_distinct() -> None:
    assert stable_id("INC-1/ack/1/breached") == stable_id("INC-1/ack/1/breached")
    assert stable_id("INC-1/ack/1/breached") != stable_id("INC-1/ack/2/breached")
    assert len(stable_id("x")) == 32


def _validate(text: bytes) -> None:
    document = json.loads(text)
    schema = json.loads((SCHEMAS / f"{document['type']}.schema.json").read_text())
    jsonschema.validate(document, schema, format_checker=jsonschema.FormatChecker())


texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # no lone surrogates: not UTF-8
instants = st.datetimes(
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=11)), timezone(timedelta(hours=-5, minutes=-30))]
    )
)
values = st.one_of(
    st.none(), texts, instants, st.floats(min_value=0, max_value=1, exclude_min=True, exclude_max=True)
)


@settings(max_examples=500, deadline=None)
@given(
    event_id=texts,
    kind=texts,
    subject=st.none() | texts,
    time=instants,
    data=st.dictionaries(texts, values, max_size=6),
)
def test_output_bytes_are_orjsons(
    event_id: str, kind: str, subject: str | None, time: datetime, data: dict[str, object]
) -> None:
    """OutputEvent serializes itself with msgspec; the wire bytes stay what orjson made of `to_json()`."""
    event = OutputEvent(id=event_id, type=kind, subject=subject, time=time, data=data)
    expected = orjson.dumps(event.to_json(), option=orjson.OPT_UTC_Z)
    assert event.to_json_bytes() == expected
    assert event.to_json_line() == expected + b"\n"
    assert encode_output_lines([event, event]) == (expected + b"\n") * 2

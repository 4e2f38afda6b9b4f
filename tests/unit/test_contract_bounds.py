"""The contract refuses what cannot be stored or reasoned about, alike in both decoders (design §6)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incident_contracts import SchemaError, parse_event
from incident_contracts.bounds import MAX_ID_LENGTH, MAX_TEXT_LENGTH, check_event_time
from incident_contracts.fast import decode_fast
from tests.unit.test_fast_decode import DATA, FIELDS, assert_same, envelope

pytestmark = pytest.mark.unit

REPORTED = {"severity": "high", "region": "uk", "summary": "s"}


def reported(**data: Any) -> dict[str, Any]:
    return envelope("incident.reported", data={**REPORTED, **data})


@pytest.mark.parametrize(
    ("body", "field", "why"),
    [
        (envelope(id="x" * (MAX_ID_LENGTH + 1)), "id", "at most 256 characters"),
        (envelope(id="e\u00001"), "id", "U+0000"),
        (envelope(id="e\n"), "id", "U+000A"),
        (envelope(source="/" * 257), "source", "at most 256 characters"),
        (envelope(source="/channels/\u007f"), "source", "U+007F"),
        (envelope(subject="INC-7\u0000x"), "subject", "U+0000 at position 5"),
        (envelope(subject="I" * 257), "subject", "at most 256 characters"),
        (envelope(subject="INC\u0085"), "subject", "U+0085"),  # C1 control
        (envelope(time="9999-12-31T23:59:59Z"), "time", "year 9999 is outside 2000..2099"),
        (envelope(time="0001-01-01T00:00:00+01:00"), "time", "year 1 is outside"),
        (envelope(time="1970-01-01T00:00:00Z"), "time", "year 1970"),
        (envelope(time="1999-12-31T23:59:59Z"), "time", "year 1999"),
        (envelope(time="2100-01-01T00:00:00Z"), "time", "year 2100"),
        (envelope(dataschema="urn:\u0000"), "dataschema", "U+0000"),
        (reported(summary="s" * (MAX_TEXT_LENGTH + 1)), "data.summary", "at most 4096 characters"),
        (reported(summary="a\u0000b"), "data.summary", "U+0000"),
        (reported(summary="bell\u0007"), "data.summary", "U+0007"),
        (reported(customer="c\u0000"), "data.customer", "U+0000"),
        (reported(customer="c" * 257), "data.customer", "at most 256 characters"),
        (reported(policy="livepro-1\u0000"), "data.policy", "U+0000"),
        (envelope("incident.acknowledged", data={"by": "ann\n"}), "data.by", "U+000A"),
        (envelope("incident.failed_over", data={"site": "dc\t2"}), "data.site", "U+0009"),
        (envelope("incident.updated", data={"note": "x" * 4097}), "data.note", "at most 4096"),
        (envelope("incident.restored", data={"note": "\u0000"}), "data.note", "U+0000"),
        (envelope(traceparent="00-\u0000"), "(message)", "extension attribute traceparent: control"),
        (envelope(Trace="x"), "(message)", "names are 1..20 of a-z, 0-9"),
        (envelope(ext={"nested": 1}), "(message)", "a string, boolean or integer"),
        (envelope(ext="x" * 4097), "(message)", "longer than 4096"),
    ],
)
def test_each_bound_is_a_schema_rejection_in_both_decoders(
    body: dict[str, Any], field: str, why: str
) -> None:
    raw = orjson.dumps(body)
    assert decode_fast(raw) is None  # the fast path gives up: pydantic decides and explains
    with pytest.raises(SchemaError) as caught:
        parse_event(raw)
    assert caught.value.detail.startswith(f"{field}: ") and why in caught.value.detail, caught.value.detail


@pytest.mark.parametrize(
    "body",
    [
        envelope(id="x" * MAX_ID_LENGTH, source="/" * 256, subject="I" * 256),
        envelope(subject="INC-\u00e9\u4e2d\U0001f525"),  # any printable character
        reported(summary="s" * MAX_TEXT_LENGTH, customer="c" * 256, policy="livepro-2"),
        envelope("incident.updated", data={"note": "n" * MAX_TEXT_LENGTH}),
        envelope(time="2000-01-01T00:00:00+01:00"),  # the year as written counts
        envelope(time="2099-12-31T23:59:59.999999-05:00"),
    ],
)
def test_values_at_the_bounds_are_taken_alike(body: dict[str, Any]) -> None:
    raw = orjson.dumps(body)
    assert decode_fast(raw) is not None
    parse_event(raw)
    assert_same(raw)


def test_line_breaks_in_free_text_are_taken_by_pydantic() -> None:
    """The fast path gives up on any JSON escape (it cannot see a control character cheaply otherwise)."""
    raw = orjson.dumps(reported(summary="line 1\nline 2\r\n\ttabbed"))
    assert decode_fast(raw) is None
    assert parse_event(raw).data.summary == "line 1\nline 2\r\n\ttabbed"  # type: ignore[attr-defined]


def test_extension_attributes_within_the_bounds_are_kept() -> None:
    raw = orjson.dumps(envelope(traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                                sampled=True, hops=3, nothing=None))  # fmt: skip
    assert set(parse_event(raw).model_extra or {}) == {"traceparent", "sampled", "hops", "nothing"}


NOW = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
SKEW, AGE = timedelta(minutes=5), timedelta(days=30)


@pytest.mark.parametrize(
    ("time", "refused"),
    [
        (NOW, None),
        (NOW + SKEW, None),
        (NOW + SKEW + timedelta(microseconds=1), "ahead of the engine clock"),
        (datetime(2099, 1, 1, tzinfo=UTC), "26602 days ahead"),
        (NOW - AGE, None),
        (NOW - AGE - timedelta(seconds=1), "30 days old"),
        (datetime(2000, 1, 1, tzinfo=UTC), "INCIDENTS_MAX_EVENT_AGE"),
    ],
)
def test_the_live_time_bounds(time: datetime, refused: str | None) -> None:
    why = check_event_time(time, NOW, SKEW, AGE)
    assert (why is None) == (refused is None) and (refused is None or refused in (why or "")), why


# -- differential: the fast path and pydantic agree on accept/reject and on the decoded fields --------

controls = st.sampled_from(["\u0000", "\u0001", "\t", "\n", "\r", "\u001f", "\u007f", "\u0085", "\u009f"])
texts = st.one_of(
    st.text(max_size=8),
    st.builds(lambda a, c, b: a + c + b, st.text(max_size=4), controls, st.text(max_size=4)),
    st.builds(
        lambda c, n: c * n,
        st.sampled_from(["x", "\u00e9", "\U0001f525"]),
        st.sampled_from([0, 1, 255, 256, 257, 4095, 4096, 4097]),
    ),
)
years = st.sampled_from([1, 1969, 1970, 1999, 2000, 2026, 2099, 2100, 9999])
times = st.builds(
    lambda y, rest: f"{y:04d}{rest}",
    years,
    st.sampled_from(["-01-01T00:00:00Z", "-12-31T23:59:59Z", "-01-01T00:00:00+01:00",
                     "-12-31T23:59:59.999999-14:00", "-06-11T10:00:00+05:30"]),
)  # fmt: skip
STRING_FIELDS = ("id", "source", "subject", "dataschema")
DATA_FIELDS = {
    "incident.reported": ("summary", "policy", "customer"),
    "incident.acknowledged": ("by",),
    "incident.investigating": ("note",),
    "incident.failed_over": ("site",),
    "incident.restored": ("note",),
    "incident.updated": ("note",),
}


@settings(max_examples=800, deadline=None)
@given(
    st.sampled_from(sorted(DATA)),
    st.dictionaries(st.sampled_from(STRING_FIELDS), texts, max_size=3),
    st.none() | times,
    st.data(),
)
def test_decoders_agree_on_bounded_strings_and_times(
    event_type: str, strings: dict[str, str], time: str | None, data: st.DataObject
) -> None:
    changes: dict[str, Any] = dict(strings)
    if time is not None:
        changes["time"] = time
    fields = DATA_FIELDS[event_type]
    payload = {
        **(DATA[event_type] or {}),
        **data.draw(st.dictionaries(st.sampled_from(fields), texts, max_size=2)),
    }
    assert_same(orjson.dumps(envelope(event_type, **changes, data=payload or DATA[event_type])))


def test_the_differential_covers_the_fields() -> None:
    assert set(STRING_FIELDS) | {"time"} <= set(FIELDS)

"""The fast decoder of `simulate` accepts a subset of what the pydantic models accept, with equal values."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from incident_contracts.fast import decode_fast
from incident_contracts.models import INPUT_ADAPTER

pytestmark = pytest.mark.unit

FIELDS = ("specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema")
DATA = {
    "incident.reported": {"severity": "high", "region": "uk", "summary": "s"},
    "incident.acknowledged": None,
    "incident.investigating": {"note": "n"},
    "incident.failed_over": {"site": "dc-2"},
    "incident.restored": {},
    "incident.updated": {"note": "n"},
}


def envelope(event_type: str = "incident.acknowledged", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "specversion": "1.0",
        "id": "e-1",
        "source": "/channels/email",
        "type": event_type,
        "subject": "INC-1",
        "time": "2025-06-11T10:00:00Z",
        "data": DATA[event_type],
    }
    base.update(changes)
    return base


def assert_same(raw: bytes) -> None:
    """decode_fast(raw) is None, or equal to the pydantic event; pydantic refusing means None."""
    fast = decode_fast(raw)
    try:
        model = INPUT_ADAPTER.validate_json(raw)
    except ValidationError:
        assert fast is None, raw
        return
    if fast is None:
        return
    for name in FIELDS:
        assert getattr(fast, name) == getattr(model, name), (name, raw)
    assert fast.time.utcoffset() == model.time.utcoffset()
    if model.data is None:
        assert fast.data is None
    else:
        assert fast.data is not None
        assert {f: getattr(fast.data, f) for f in fast.data.__struct_fields__} == model.data.model_dump()


@pytest.mark.parametrize("event_type", sorted(DATA))
def test_every_type_takes_the_fast_path(event_type: str) -> None:
    raw = orjson.dumps(envelope(event_type))
    assert decode_fast(raw) is not None
    assert_same(raw)


@pytest.mark.parametrize(
    "changes",
    [
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},  # kept by pydantic
        {"time": "2025-06-11 10:00:00Z"},
        {"time": "2025-06-11T10:00:00"},
        {"time": "2025-06-11T10:00:00.1234567Z"},
        {"time": "2025-06-11t10:00:00z"},
        {"time": 1749636000},
        {"time": "2025-02-30T10:00:00Z"},
        {"time": "2025-06-11T10:00:00Z\n"},  # the pattern is anchored at the very end
        {"time": "\uff12025-06-11T10:00:00Z"},  # a full-width digit: ASCII digits only
        {"time": None},
        {"id": ""},
        {"id": 5},
        {"specversion": "0.3"},
        {"type": "incident.exploded"},
        {"datacontenttype": "text/plain"},
        {"data": {"by": "x", "mood": "y"}},
        {"data": "text"},
    ],
)
def test_other_shapes_go_to_pydantic(changes: dict[str, Any]) -> None:
    raw = orjson.dumps(envelope(**changes))
    assert decode_fast(raw) is None
    assert_same(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b"\xff\xfe",
        b'{"specversion":"1.0","id":"\\ud800","source":"s","type":"incident.restored","subject":"i",'
        b'"time":"2025-06-11T10:00:00Z"}',
        b'{"type":"incident.restored","type":"incident.reported"}',
        orjson.dumps(envelope()) + b" x",
    ],
)
def test_bad_bytes_go_to_pydantic(raw: bytes) -> None:
    assert decode_fast(raw) is None


digits = st.integers(min_value=0, max_value=99).map(lambda n: f"{n:02d}")
times = st.one_of(
    st.builds(
        lambda y, mo, d, sep, h, mi, s, frac, tz: f"{y:04d}-{mo}-{d}{sep}{h}:{mi}:{s}{frac}{tz}",
        st.integers(min_value=0, max_value=9999),
        digits,
        digits,
        st.sampled_from(["T", "t", " ", "_"]),
        digits,
        digits,
        digits,
        st.one_of(st.just(""), st.text("0123456789", min_size=1, max_size=9).map(lambda f: "." + f)),
        st.one_of(
            st.sampled_from(["Z", "z", "", "+00:00", "-00:00", "+24:00", "+0100", "+01"]),
            st.builds(lambda sign, h, m: f"{sign}{h}:{m}", st.sampled_from("+-"), digits, digits),
        ),
    ),
    st.text(max_size=30),
)


@settings(max_examples=600, deadline=None)
@given(times)
def test_times_agree_with_pydantic(text: str) -> None:
    assert_same(orjson.dumps(envelope(time=text)))


values = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=5), st.just({})
)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(sorted(DATA)),
    st.dictionaries(
        st.sampled_from([*FIELDS, "data", "extra"]), values | st.sampled_from(sorted(DATA)), max_size=3
    ),
    st.dictionaries(
        st.sampled_from(["severity", "region", "summary", "policy", "customer", "by", "note", "site", "x"]),
        values | st.sampled_from(["critical", "low", "au", "us", ""]),
        max_size=4,
    ),
)
def test_envelopes_agree_with_pydantic(
    event_type: str, changes: dict[str, Any], data: dict[str, Any]
) -> None:
    assert_same(orjson.dumps(envelope(event_type, **changes)))
    assert_same(orjson.dumps(envelope(event_type, data={**(DATA[event_type] or {}), **data})))

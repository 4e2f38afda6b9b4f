"""The outbox row codec: a round trip, compression, and rows written before compression."""

from __future__ import annotations

import struct

import orjson
import pytest

from incident_engine.adapters.outbox_codec import decode_messages, encode_messages
from incident_engine.adapters.store import OutboxRow

pytestmark = pytest.mark.unit


def rows(n: int) -> list[OutboxRow]:
    return [
        OutboxRow(
            3, "incidents.breaches" if i % 2 else "incidents.state", f"INC-{i}".encode() if i % 5 else None,
            f"{i:032x}", orjson.dumps({"specversion": "1.0", "id": f"{i:032x}", "data": {"n": i}}),
            {"traceparent": f"00-{i:032x}-{i:016x}-01"} if i % 3 else None,
        )
        for i in range(n)
    ]  # fmt: skip


def fields(out: list[OutboxRow]) -> list[tuple[object, ...]]:
    return [(o.partition, o.topic, o.key, o.event_id, o.payload, o.headers) for o in out]


def test_round_trip_keeps_every_field_and_the_order() -> None:
    sent = rows(300)
    back = decode_messages(encode_messages(sent), 3, 42)
    assert fields(back) == fields(sent)
    assert {o.id for o in back} == {42}


def test_rows_are_compressed() -> None:
    sent = rows(300)
    assert len(encode_messages(sent)) < sum(len(o.payload) for o in sent) / 2


def test_rows_written_before_compression_still_decode() -> None:
    sent = rows(20)
    parts = []
    for o in sent:  # the plain framing of migration 0001's era
        headers = orjson.dumps(o.headers) if o.headers else None
        for field in (o.topic.encode(), o.key, o.event_id.encode(), headers, o.payload):
            absent = field is None
            parts.append(struct.pack(">I", 0xFFFFFFFF) if absent else struct.pack(">I", len(field)) + field)
    assert fields(decode_messages(b"".join(parts), 3, 1)) == fields(sent)


def test_a_truncated_row_is_an_error() -> None:
    with pytest.raises(ValueError, match="truncated"):
        decode_messages(struct.pack(">I", 3) + b"abc", 0, 9)

"""The framing of an outbox row: many output messages in one bytea, decoded without copying twice."""

from __future__ import annotations

import struct

import orjson

from incident_engine.adapters.store import OutboxRow

_LEN = struct.Struct(">I")
_NONE = 0xFFFFFFFF  # length marking an absent field (a message without key or headers)


def encode_messages(outputs: list[OutboxRow]) -> bytes:
    """(topic, key, event id, headers JSON, payload) of each output, length-prefixed, in order."""
    parts: list[bytes] = []
    for out in outputs:
        headers = orjson.dumps(out.headers) if out.headers else None
        for field in (out.topic.encode(), out.key, out.event_id.encode(), headers, out.payload):
            if field is None:
                parts.append(_LEN.pack(_NONE))
            else:
                parts.append(_LEN.pack(len(field)))
                parts.append(field)
    return b"".join(parts)


def decode_messages(blob: bytes, partition: int, row_id: int) -> list[OutboxRow]:
    """Inverse of encode_messages."""
    view = memoryview(blob)
    pos, end = 0, len(blob)
    rows: list[OutboxRow] = []
    fields: list[bytes | None] = []
    while pos < end:
        (size,) = _LEN.unpack_from(view, pos)
        pos += 4
        if size == _NONE:
            fields.append(None)
        else:
            fields.append(bytes(view[pos : pos + size]))
            pos += size
        if len(fields) == 5:
            topic, key, event_id, headers, payload = fields
            assert topic is not None and event_id is not None and payload is not None
            rows.append(
                OutboxRow(partition, topic.decode(), key, event_id.decode(), payload,
                          orjson.loads(headers) if headers else None, row_id)
            )  # fmt: skip
            fields = []
    if fields:
        raise ValueError(f"outbox row {row_id} is truncated")
    return rows

"""The framing of an outbox row: many output messages in one bytea, lz4-compressed.

A row holds the outputs of one batch and input partition: tens of KB of JSON. Compressed here
(lz4, a few hundred MB/s) it costs the engine less than handing the plain bytes to Postgres, and
Postgres no longer compresses it itself (pglz, slow: it was the largest cost of a batch's
transaction; migration 0003 stores the column uncompressed). Rows written before that are plain
framing and still decode (a frame starts with the lz4 magic number, plain framing with 0x00).
"""

from __future__ import annotations

import struct

import lz4.frame
import orjson

from incident_engine.adapters.store import OutboxRow

_LEN = struct.Struct(">I")
_NONE = 0xFFFFFFFF  # length marking an absent field (a message without key or headers)
_LZ4_MAGIC = b"\x04\x22\x4d\x18"


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
    return lz4.frame.compress(b"".join(parts))


def decode_messages(blob: bytes, partition: int, row_id: int) -> list[OutboxRow]:
    """Inverse of encode_messages (and of its plain framing, before compression)."""
    if blob[:4] == _LZ4_MAGIC:
        blob = lz4.frame.decompress(blob)
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

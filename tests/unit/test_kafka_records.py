"""A record whose header name is not UTF-8 is read (to be dead-lettered), not raised out of the fetcher."""

from __future__ import annotations

import pytest
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.record.memory_records import MemoryRecords

from incident_engine.adapters import kafka_records
from incident_engine.adapters.kafka_records import TolerantMemoryRecords

pytestmark = pytest.mark.unit


class RawName(str):
    """A header name that the (Python) batch builder writes as bytes that are not UTF-8."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"x-\xff"


def batch(base: int, codec: int = 0) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(
        magic=2, compression_type=codec, is_transactional=False, producer_id=-1, producer_epoch=-1,
        base_sequence=-1, batch_size=1 << 20,
    )  # fmt: skip
    builder.append(0, timestamp=1, key=b"k0", value=b"v0", headers=[("traceparent", b"t")])
    builder.append(1, timestamp=1, key=b"k1", value=b"v1", headers=[(RawName("x"), b"y")])
    builder.append(2, timestamp=1, key=b"k2", value=b"v2", headers=[])
    data = bytearray(builder.build())
    data[0:8] = base.to_bytes(8, "big")  # the base offset (outside the CRC)
    return bytes(data)


@pytest.mark.parametrize("codec", [0, 1])  # none, gzip
def test_every_record_is_read_with_the_bad_name_as_surrogates(codec: int) -> None:
    data = batch(0, codec) + batch(3, codec)
    with pytest.raises(UnicodeDecodeError):  # aiokafka alone: the fetcher raises, for good
        list(MemoryRecords(data).next_batch())
    records = TolerantMemoryRecords(data)
    read = []
    while records.has_next():
        current = records.next_batch()
        assert current.validate_crc()
        read += [(r.offset, r.key, r.headers) for r in current]
    assert read == [
        (0, b"k0", [("traceparent", b"t")]), (1, b"k1", [("x-\udcff", b"y")]), (2, b"k2", []),
        (3, b"k0", [("traceparent", b"t")]), (4, b"k1", [("x-\udcff", b"y")]), (5, b"k2", []),
    ]  # fmt: skip
    assert "x-\udcff".encode(errors="surrogateescape") == b"x-\xff"


def test_install_makes_the_fetcher_tolerant() -> None:
    kafka_records.install()
    assert fetcher.MemoryRecords is TolerantMemoryRecords

"""Records whose header names are not UTF-8 reach the engine (to be dead-lettered) instead of stopping it.

aiokafka decodes every header name as strict UTF-8 while it unpacks a fetched batch. One record
with a name that is not raises UnicodeDecodeError out of `getmany`, before the consumer position
moves, on every retry: the partition is stuck for good. `install()` makes the fetcher read batches
through `TolerantMemoryRecords`: aiokafka's own (C) reader as before, and only for a batch where it
fails, aiokafka's Python reader again with names decoded with `surrogateescape`. The engine then
sees the record, with its key and value, and dead-letters it (`decode`: the processor refuses a
header name holding lone surrogates). The cost on healthy input is one generator step per record.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from aiokafka.consumer import fetcher as _fetcher
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchPy
from aiokafka.record.memory_records import MemoryRecords

_LOG_OVERHEAD = 12  # base offset + batch length, not counted in the length


class _LenientSlice(bytes):
    """A slice of a record buffer whose `decode` never fails (undecodable bytes become surrogates)."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes.decode(self, encoding, "surrogateescape")


class _LenientBuffer(bytearray):
    """The records of a batch; slices of it decode leniently (aiokafka slices, then decodes names)."""

    def __getitem__(self, index: Any) -> Any:
        item = super().__getitem__(index)
        return _LenientSlice(item) if isinstance(index, slice) else item


class _LenientBatch(_DefaultRecordBatchPy):
    """aiokafka's Python reader of one batch, over a lenient buffer once it is decompressed."""

    def __iter__(self) -> _LenientBatch:
        super().__iter__()  # decompresses
        buffer: bytearray = self._buffer  # type: ignore[has-type]  # set by aiokafka's __init__
        self._buffer = _LenientBuffer(buffer)
        return self


class _TolerantBatch:
    """A batch of aiokafka's C reader that falls back to the lenient reader where the C one fails."""

    __slots__ = ("_batch", "_data", "_end", "_start")

    def __init__(self, batch: Any, data: bytes, start: int, end: int) -> None:
        self._batch = batch
        self._data = data
        self._start = start
        self._end = end

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)  # base_offset, next_offset, validate_crc, producer_id, ...

    def __iter__(self) -> Iterator[Any]:
        read = 0
        try:
            for record in self._batch:
                yield record
                read += 1
        except UnicodeDecodeError:
            lenient = _LenientBatch(bytearray(self._data[self._start : self._end]))
            for number, record in enumerate(lenient):
                if number >= read:
                    yield record


class TolerantMemoryRecords:
    """aiokafka's MemoryRecords, whose record batches survive header names that are not UTF-8."""

    def __init__(self, data: bytes) -> None:
        self._records = MemoryRecords(data)
        self._data = data
        self._pos = 0

    def size_in_bytes(self) -> int:
        """The size of the fetched data."""
        return self._records.size_in_bytes()

    def has_next(self) -> bool:
        """Whether another complete batch follows."""
        return self._records.has_next()

    def next_batch(self) -> Any:
        """The next batch (None at the end); v2 data batches are read tolerantly."""
        batch = self._records.next_batch()
        if batch is None:
            return None
        start = self._pos
        end = start + _LOG_OVERHEAD + int.from_bytes(self._data[start + 8 : start + 12], "big")
        self._pos = end
        if not isinstance(batch, DefaultRecordBatch) or batch.is_control_batch:
            return batch  # legacy batches have no headers; control batches are read by aiokafka
        return _TolerantBatch(batch, self._data, start, end)


def install() -> None:
    """Make aiokafka's fetcher (of every consumer of this process) read batches tolerantly."""
    _fetcher.MemoryRecords = TolerantMemoryRecords

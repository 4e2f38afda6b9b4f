"""A request body read with a bound: refused on its Content-Length, else counted while it streams,
so an oversized (or endless chunked) body is never buffered whole before it is refused."""

from __future__ import annotations

from starlette.requests import Request

__all__ = ["BodyTooLarge", "read_body"]


class BodyTooLarge(Exception):
    """The body is over `limit` bytes; `length` is its declared Content-Length, when that said so."""

    def __init__(self, limit: int, length: int | None = None) -> None:
        super().__init__(f"the body is over the limit of {limit} bytes")
        self.limit, self.length = limit, length


async def read_body(request: Request, limit: int) -> bytes:
    """The request's body, at most `limit` bytes (BodyTooLarge beyond, without reading the rest)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise BodyTooLarge(limit, int(length))
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)

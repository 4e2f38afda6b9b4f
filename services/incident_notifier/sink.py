"""A loopback receiver for demos: accepts the notifier's webhook and Slack posts, verifies webhook
signatures with the `standardwebhooks` verifier, counts what arrived (never for production use)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
from collections import Counter
from typing import Any

import orjson


class DemoSink:
    """`await start()`, then `url(path)`; `counts` by path and outcome, `last` the latest of each path."""

    def __init__(self) -> None:
        self.secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
        self.counts: Counter[str] = Counter()
        self.last: dict[str, Any] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _record(self, path: str, headers: dict[str, str], body: bytes) -> None:
        from standardwebhooks import Webhook

        if "webhook-signature" in headers:
            try:
                self.last[path] = Webhook(self.secret).verify(body, headers)
                self.counts[f"{path} verified"] += 1
            except Exception:
                self.counts[f"{path} bad signature"] += 1
        else:
            with contextlib.suppress(ValueError):
                self.last[path] = orjson.loads(body)
            self.counts[path] += 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                path = line.decode().split(" ")[1] if line.count(b" ") >= 2 else "/"
                headers: dict[str, str] = {}
                while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self._record(path, headers, body)
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()

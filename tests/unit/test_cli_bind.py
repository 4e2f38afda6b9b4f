"""`incidents serve` holds its HTTP port from the first moment: a second engine cannot bind it."""

from __future__ import annotations

import socket

import pytest

from incident_engine.entrypoints.commands import bind_http

pytestmark = pytest.mark.unit


def test_a_second_engine_cannot_bind_the_port_while_the_first_starts() -> None:
    first = bind_http("127.0.0.1", 0)  # uvicorn serves on it only once the engine has started
    try:
        port = first.getsockname()[1]
        with pytest.raises(OSError):
            bind_http("127.0.0.1", port).close()
        with socket.create_connection(("127.0.0.1", port), timeout=2):  # held: queued, not refused
            pass
    finally:
        first.close()
    bind_http("127.0.0.1", port).close()  # free again once the first is gone

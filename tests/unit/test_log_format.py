"""One log format: uvicorn's colour codes never reach a JSON line; the harmless coordinator retry is INFO."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from incident_platform.logging_json import configure_logging

pytestmark = pytest.mark.unit


@pytest.fixture
def lines() -> object:
    stream = io.StringIO()
    handler = configure_logging("INFO", stream=stream)
    yield lambda: [orjson.loads(line) for line in stream.getvalue().splitlines()]
    logging.getLogger().removeHandler(handler)


def test_uvicorn_colour_message_is_dropped_and_ansi_stripped(lines) -> None:  # type: ignore[no-untyped-def]
    uvicorn = logging.getLogger("uvicorn.error")
    uvicorn.info("Started server process [%d]", 42, extra={"color_message": "Started [\x1b[36m%d\x1b[0m]"})
    faststream = logging.getLogger("faststream.kafka")
    faststream.info("\x1b[32mINFO\x1b[0m waiting", extra={"topic": "incidents.events"})
    started, waiting = lines()
    assert started["message"] == "Started server process [42]" and "color_message" not in started
    assert waiting["message"] == "INFO waiting" and waiting["topic"] == "incidents.events"


def test_first_start_coordinator_retry_is_info_other_errors_stay(lines) -> None:  # type: ignore[no-untyped-def]
    coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
    coordinator.error("Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError")
    coordinator.error("Error sending JoinGroupRequest_v5 to node 1 [[Error 7] RequestTimedOutError]")
    retry, other = lines()
    assert retry["level"] == "INFO" and "GroupCoordinatorNotAvailable" in retry["message"]
    assert other["level"] == "ERROR"


def test_framework_loggers_lose_their_own_handlers() -> None:
    logging.getLogger("uvicorn.error").addHandler(logging.StreamHandler())
    handler = configure_logging("INFO", stream=io.StringIO())
    try:
        for name in ("uvicorn", "uvicorn.error", "faststream"):
            assert logging.getLogger(name).handlers == [] and logging.getLogger(name).propagate
    finally:
        logging.getLogger().removeHandler(handler)


def test_a_unicode_line_break_in_a_message_stays_inside_its_line() -> None:
    """U+0085, U+2028 and U+2029 are legal raw in JSON, but str.splitlines breaks lines there: a
    fuzzed incident id in a dead letter's log line split the engine log (found by CI)."""
    import logging

    import orjson

    from incident_platform.logging_json import JsonFormatter

    record = logging.LogRecord("t", logging.WARNING, __file__, 1, "id a\x85b\u2028c\u2029d", None, None)
    line = JsonFormatter().format(record)
    assert line.splitlines() == [line]
    assert orjson.loads(line)["message"] == "id a\x85b\u2028c\u2029d"

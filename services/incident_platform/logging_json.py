"""Structured logs: one JSON object per line, with the current trace ids and secrets masked."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any, Final

import orjson
from opentelemetry import trace

__all__ = ["CoordinatorRetryFilter", "JsonFormatter", "RedactingFilter", "configure_logging", "redact"]

_MASK: Final = "***"
_URL_PASSWORD: Final = re.compile(
    # scheme://user:password@host; a password in a URL has '/', '?', '#', '@' percent-encoded
    r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/?#@\s'\"]*:)[^/?#@\s'\"]+(?=@)"
)
_KEY_VALUE: Final = re.compile(
    # password=..., sasl_password: ..., token=... in DSN keywords, settings dumps (JSON too), messages
    r"(?P<keep>\b(?:[a-z_]*password|passwd|pwd|secret|[a-z_]*token|api[_-]?key)['\"]?\s*[=:]\s*)"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s'\",;&]+)",
    re.IGNORECASE,
)
_BEARER: Final = re.compile(r"(?P<keep>\bBearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)


def _mask_value(match: re.Match[str]) -> str:
    value = match["value"]
    quote = value[0] if value[0] in "'\"" else ""  # keep quotes so a masked JSON line stays JSON
    return f"{match['keep']}{quote}{_MASK}{quote}"


# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged too
# (but uvicorn's `color_message`: the message again, with terminal colour codes).
_RECORD_FIELDS: Final = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal escape codes: never inside a JSON line
# What aiokafka's group coordinator says at ERROR while a fresh broker elects the coordinator of a
# group (its first start, the group's first join): harmless, retried at once, so said at INFO.
_COORDINATOR_LOGGER: Final = "aiokafka.consumer.group_coordinator"
_COORDINATOR_RETRY: Final = re.compile(
    r"Group Coordinator Request failed: \[Error \d+\] "
    r"(GroupCoordinatorNotAvailableError|CoordinatorLoadInProgressError|NotCoordinatorForGroupError)"
)
_HANDLER_MARK: Final = "_incidents_json_handler"


def redact(text: str) -> str:
    """`text` with credentials (URL passwords, password=/token= values, bearer tokens) masked."""
    text = _URL_PASSWORD.sub(rf"\g<keep>{_MASK}", text)
    text = _KEY_VALUE.sub(_mask_value, text)
    text = _BEARER.sub(rf"\g<keep>{_MASK}", text)
    return text


class RedactingFilter(logging.Filter):
    """Masks secrets in the message and in string `extra` fields before any handler formats them."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops it."""
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


class CoordinatorRetryFilter(logging.Filter):
    """Says aiokafka's harmless "coordinator not available yet" at INFO instead of ERROR (only that)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Lower the level of the known-harmless message; never drops a record."""
        if record.levelno > logging.INFO and _COORDINATOR_RETRY.match(record.getMessage()):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, trace_id, span_id, then the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON object, no newline inside."""
        payload: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message if "\x1b" not in (message := record.getMessage()) else _ANSI.sub("", message),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            payload["trace_id"] = format(span_context.trace_id, "032x")
            payload["span_id"] = format(span_context.span_id, "016x")
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS:
                payload.setdefault(key, value)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        # Redact the whole line too: extras may be dicts or objects whose str() holds a DSN.
        line = orjson.dumps(payload, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        # JSON may hold U+0085, U+2028 and U+2029 raw, but readers that split on Unicode line breaks
        # (Python's str.splitlines) would cut the line there: escaped, one record stays one line.
        return redact(line.translate(_LINE_BREAKS))


def configure_logging(level: str | int = "INFO", stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record to `stream` (default stdout) as JSON lines; calling again replaces it."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter())
    setattr(handler, _HANDLER_MARK, True)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Client libraries are chatty at INFO (every rebalance step); their warnings still come through.
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    coordinator = logging.getLogger(_COORDINATOR_LOGGER)
    if not any(isinstance(f, CoordinatorRetryFilter) for f in coordinator.filters):
        coordinator.addFilter(CoordinatorRetryFilter())
    # uvicorn and FastStream log through the root handler, in this format (no handlers of their own)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream"):
        framework = logging.getLogger(name)
        framework.handlers.clear()
        framework.propagate = True
    return handler


_LINE_BREAKS = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}

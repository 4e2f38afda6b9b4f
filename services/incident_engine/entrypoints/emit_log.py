"""One structured log line per breach, failover order and dead letter the engine commits, rate-limited.

A storm (a broker outage ending, a bad upstream sending thousands of events for unknown incidents)
must not flood the log: each kind gets at most `per_second` lines a second; the rest are counted and
said in one line ("suppressed K ...") when the second is over. Nothing is formatted for an output
that is not logged, and outputs of other types cost one dict look-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from incident_contracts.constants import (
    FAILOVER_REQUIRED,
    INCIDENT_REJECTED,
    REASON_UNPROCESSABLE,
    SLA_BREACHED,
)
from incident_contracts.envelope import OutputEvent

log = logging.getLogger("incident_engine.outputs")
_KINDS = {SLA_BREACHED: "breach", FAILOVER_REQUIRED: "failover", INCIDENT_REJECTED: "dead_letter"}
_DETAIL_LIMIT = 300  # characters of a dead letter's detail quoted in its line


class RateLimiter:
    """At most `per_second` yeses per kind in each one-second window; counts the noes."""

    def __init__(self, per_second: int = 10, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_second = per_second
        self.clock = clock
        self._windows: dict[str, list[float]] = {}  # kind -> [window start, allowed, suppressed]

    def allow(self, kind: str) -> bool:
        """Whether one more line of `kind` may be logged now."""
        now = self.clock()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= 1.0:
            self._close(kind, window)
            window = self._windows[kind] = [now, 0, 0]
        if window[1] < self.per_second:
            window[1] += 1
            return True
        window[2] += 1
        return False

    def flush(self, *, final: bool = False) -> None:
        """Say what the windows that are over (every window when `final`) suppressed (cheap: called
        once per batch, on the engine's periodic tick when no batch commits, and at shutdown)."""
        now = self.clock()
        for kind, window in list(self._windows.items()):
            if final or now - window[0] >= 1.0:
                self._close(kind, window)
                del self._windows[kind]

    @staticmethod
    def _close(kind: str, window: list[float] | None) -> None:
        if window is not None and window[2]:
            log.warning(
                "suppressed %d %s log lines (more than %d in %.1f s)",
                int(window[2]), kind, int(window[1]), 1.0,
                extra={"kind": kind, "suppressed": int(window[2])},
            )  # fmt: skip


class OutputLog:
    """Logs committed breaches and failover orders at INFO and dead letters at WARNING."""

    def __init__(self, per_second: int = 10, clock: Callable[[], float] = time.monotonic) -> None:
        self.limiter = RateLimiter(per_second, clock)

    def committed(self, outputs: Iterable[OutputEvent]) -> None:
        """Log what matters among a committed batch's outputs."""
        kinds, allow = _KINDS, self.limiter.allow
        for out in outputs:
            kind = kinds.get(out.type)
            if kind is not None and allow(kind):
                _log_one(kind, out)
        self.limiter.flush()

    def tick(self, *, final: bool = False) -> None:
        """Say the suppressed counts of a storm that ended with no batch after it (a quiet partition)."""
        self.limiter.flush(final=final)


def _log_one(kind: str, out: OutputEvent) -> None:
    data: dict[str, Any] = out.data
    fields = {"incident": out.subject, "output_id": out.id, "output_type": out.type}
    if kind == "dead_letter":
        if data.get("reason") == REASON_UNPROCESSABLE:
            return  # the isolation already logged it, with its partition and offset
        detail = str(data.get("detail", ""))[:_DETAIL_LIMIT]
        fields.update(reason=data.get("reason"), detail=detail)
        reason = data.get("reason")
        incident = out.subject or "(none: no Kafka key)"
        log.warning("dead-lettered (%s) for incident %s: %s", reason, incident, detail, extra=fields)
        return
    due = data.get("due_at")
    due_at = due.isoformat() if isinstance(due, datetime) else str(due)
    fields.update(
        clock=data.get("clock", "restore"), due_at=due_at, severity=data.get("severity"),
        region=data.get("region"), policy=data.get("policy"),
    )  # fmt: skip
    fields = {k: v for k, v in fields.items() if v is not None}  # (a failover order has no severity)
    if kind == "breach":
        clock = fields.get("clock")
        log.info("SLA breached: incident %s, clock %s, due %s", out.subject, clock, due_at, extra=fields)
    else:
        log.info("failover required: incident %s, restore due %s", out.subject, due_at, extra=fields)

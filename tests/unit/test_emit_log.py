"""The engine's log lines for breaches, failover orders and dead letters, and their rate limit."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from incident_contracts.constants import (
    FAILOVER_REQUIRED,
    INCIDENT_REJECTED,
    SLA_BREACHED,
    SLA_WARNING,
    STATE_CHANGED,
)
from incident_contracts.envelope import OutputEvent
from incident_engine.entrypoints.emit_log import OutputLog

pytestmark = pytest.mark.unit
DUE = datetime(2026, 3, 5, 14, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def output(type_: str, incident: str = "INC-1", **data: object) -> OutputEvent:
    return OutputEvent(id=f"id-{incident}-{type_}", type=type_, subject=incident, time=DUE, data=dict(data))


def breach(incident: str = "INC-1") -> OutputEvent:
    return output(SLA_BREACHED, incident, clock="ack", due_at=DUE, policy="livepro-1", severity="critical",
                  region="au")  # fmt: skip


def records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "incident_engine.outputs"]


def test_breach_failover_and_dead_letter_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    OutputLog().committed([
        breach(),
        output(FAILOVER_REQUIRED, due_at=DUE, policy="livepro-1", region="au"),
        output(INCIDENT_REJECTED, "GHOST", reason="unknown_incident", detail="no incident 'GHOST'"),
        output(STATE_CHANGED, **{"from": None, "to": "reported", "cause": "e1"}),
        output(SLA_WARNING, clock="ack", threshold=0.5, due_at=DUE),
    ])  # fmt: skip
    lines = records(caplog)
    assert [(r.levelname, r.output_type) for r in lines] == [  # type: ignore[attr-defined]
        ("INFO", SLA_BREACHED),
        ("INFO", FAILOVER_REQUIRED),
        ("WARNING", INCIDENT_REJECTED),
    ]  # fmt: skip  (state changes and warnings are not logged: they are the routine)
    breached, failover, dead = lines
    wanted = {"incident": "INC-1", "clock": "ack", "due_at": DUE.isoformat(), "severity": "critical"}
    assert {k: vars(breached).get(k) for k in wanted} == wanted
    assert "INC-1" in breached.getMessage() and "ack" in breached.getMessage()
    assert failover.clock == "restore" and failover.due_at == DUE.isoformat()  # type: ignore[attr-defined]
    assert dead.reason == "unknown_incident" and dead.incident == "GHOST"  # type: ignore[attr-defined]
    assert "no incident 'GHOST'" in dead.getMessage()


def test_unprocessable_is_left_to_the_isolation_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    OutputLog().committed([output(INCIDENT_REJECTED, reason="unprocessable", detail="boom", original="x")])
    assert records(caplog) == []


def test_a_storm_is_cut_to_n_lines_a_second_then_one_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    emitted = OutputLog(per_second=5, clock=clock)
    emitted.committed([breach(f"INC-{n}") for n in range(1000)])
    emitted.committed([output(INCIDENT_REJECTED, f"X-{n}", reason="schema", detail="d") for n in range(3)])
    lines = records(caplog)
    assert sum(r.getMessage().startswith("SLA breached") for r in lines) == 5
    assert sum(r.getMessage().startswith("dead-lettered") for r in lines) == 3  # a kind of its own
    assert not any("suppressed" in r.getMessage() for r in lines)  # not before the second is over
    clock.now += 1.0
    emitted.committed([])
    summaries = [r for r in records(caplog) if "suppressed" in r.getMessage()]
    assert len(summaries) == 1
    assert summaries[0].suppressed == 995 and summaries[0].kind == "breach"  # type: ignore[attr-defined]
    emitted.committed([breach("INC-next")])  # a new second: lines again
    assert records(caplog)[-1].getMessage().startswith("SLA breached: incident INC-next")


def test_a_storm_followed_by_silence_is_still_summarised(caplog: pytest.LogCaptureFixture) -> None:
    """No batch after the storm (a quiet partition): the engine's tick, or its shutdown, says it."""
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    out_log = OutputLog(per_second=2, clock=clock)
    out_log.committed([breach(f"INC-{n}") for n in range(7)])
    assert len(records(caplog)) == 2
    out_log.tick()  # the window is not over yet: nothing to say
    assert len(records(caplog)) == 2
    clock.now += 1.5
    out_log.tick()
    assert [r.getMessage() for r in records(caplog)][-1].startswith("suppressed 5 breach log lines")
    out_log.committed([breach(f"INC-{n}") for n in range(10, 15)])  # a second storm, then shutdown
    out_log.tick(final=True)
    assert [r.getMessage() for r in records(caplog)][-1].startswith("suppressed 3 breach log lines")

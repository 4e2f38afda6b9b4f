"""The per-incident state: a small mutable record, JSON-able for the projection and the timers table."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

import msgspec
import orjson

from incident_contracts.envelope import OutputEvent, stable_id

RUNNING: Final = "running"
MET: Final = "met"
BREACHED: Final = "breached"
CANCELLED: Final = "cancelled"

# The resolution of every moment (datetimes count microseconds): "strictly before t" is "by t - TICK".
TICK: Final = timedelta(microseconds=1)

WARNING: Final = "warning"
BREACH: Final = "breached"
FAILOVER: Final = "failover"


class ClockState(msgspec.Struct, gc=False):
    """One SLA clock of an incident (its current cycle).

    A msgspec Struct rather than a slots dataclass: the same fields and behaviour, built in C (one
    is made per clock start); not tracked by the cyclic GC (it holds no container)."""

    started_at: datetime
    due_at: datetime
    cycle: int = 1
    stopped_at: datetime | None = None
    status: str = RUNNING  # running | met | breached | cancelled

    @property
    def active(self) -> bool:
        """True until the clock is stopped (a breached clock is still active until then)."""
        return self.stopped_at is None

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "started_at": self.started_at.isoformat(),
            "due_at": self.due_at.isoformat(),
            "cycle": self.cycle,
            "stopped_at": self.stopped_at.isoformat() if self.stopped_at else None,
            "status": self.status,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClockState:
        """Inverse of to_json."""
        stopped = d["stopped_at"]
        return cls(
            started_at=datetime.fromisoformat(d["started_at"]),
            due_at=datetime.fromisoformat(d["due_at"]),
            cycle=d["cycle"],
            stopped_at=datetime.fromisoformat(stopped) if stopped else None,
            status=d["status"],
        )


class Timer(NamedTuple):
    """One pending firing: a warning threshold, a breach, or a failover order of one clock cycle.

    Immutable (a NamedTuple rather than a frozen dataclass: four times cheaper to build). The field
    order is the firing order, so timers sort as plain tuples: due first, then by clock name, then
    kind (`breached` before `failover`). Two timers of one incident never tie on all three: one clock
    has one pending timer at a time, and a breach and its failover order differ in kind.
    """

    due_at: datetime
    clock: str
    kind: str  # warning | breached | failover
    threshold: float | None
    cycle: int
    incident_id: str

    @property
    def output_id(self) -> str:
        """The deterministic id of the CloudEvent this timer emits (computed on demand: it costs).

        `outputs.timer_fired` computes the same inline (one call less on the hot path).
        """
        _, clock, kind, threshold, cycle, incident_id = self
        if kind == WARNING:
            return stable_id(f"{incident_id}/{clock}/{cycle}/warning/{threshold}")
        return stable_id(f"{incident_id}/{clock}/{cycle}/{kind}")

    def to_json(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "incident_id": self.incident_id,
            "clock": self.clock,
            "kind": self.kind,
            "threshold": self.threshold,
            "cycle": self.cycle,
            "due_at": self.due_at.isoformat(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Timer:
        """Inverse of to_json."""
        return cls(
            incident_id=d["incident_id"],
            clock=d["clock"],
            kind=d["kind"],
            threshold=d["threshold"],
            cycle=d["cycle"],
            due_at=datetime.fromisoformat(d["due_at"]),
        )


@dataclass(slots=True)
class Incident:
    """The whole state of one incident. `handle`/`fire_due` update it in place and return it."""

    id: str
    state: str
    policy: str
    severity: str
    region: str
    reported_at: datetime
    last_event_at: datetime  # watermark: late events never move clocks back
    seq: int = 0  # accepted input events so far
    clocks: dict[str, ClockState] = field(default_factory=dict)
    timers: list[Timer] = field(default_factory=list)  # pending, sorted by Timer.sort_key
    # What the report said, for the outputs a notification is made of (`summary`, the reporting
    # channel `source`); None in a projection stored before they were kept.
    summary: str | None = None
    source: str | None = None
    # The ClockPlan of the incident's (policy, severity, region) in the SlaDomain that last handled
    # it: a cache of that domain's, not state (no part of equality, the JSON or a copy).
    plan: Any = field(default=None, compare=False, repr=False)

    @property
    def next_due(self) -> datetime | None:
        """When the earliest pending timer is due, if any."""
        return self.timers[0].due_at if self.timers else None

    def copy(self) -> Incident:
        """An independent copy (for a caller that must keep the state before a decision)."""
        return Incident.from_json(self.to_json())

    def to_json(self) -> dict[str, Any]:
        """JSON-able form (e.g. for a jsonb projection); from_json is its exact inverse.

        `to_json_bytes` builds the same document (tests/unit/test_model.py holds them together)."""
        return {
            "id": self.id,
            "state": self.state,
            "policy": self.policy,
            "severity": self.severity,
            "region": self.region,
            "reported_at": self.reported_at.isoformat(),
            "last_event_at": self.last_event_at.isoformat(),
            "seq": self.seq,
            "clocks": {name: clock.to_json() for name, clock in self.clocks.items()},
            "timers": [timer.to_json() for timer in self.timers],
            "summary": self.summary,
            "source": self.source,
        }

    def to_json_bytes(self) -> bytes:
        """`orjson.dumps(self.to_json())`, byte for byte, for about half the CPU (the projection's body,
        written for every changed incident of every batch): orjson formats the datetimes in C.

        orjson writes a datetime as `isoformat` does, except an offset with seconds (which no UTC
        moment has); so with a moment not in UTC (never made by the domain) it takes the long way."""
        reported_at, last_event_at = self.reported_at, self.last_event_at
        if reported_at.tzinfo is not UTC or last_event_at.tzinfo is not UTC:
            return orjson.dumps(self.to_json())
        clocks = {}
        for name, c in self.clocks.items():
            stopped = c.stopped_at
            if (
                c.started_at.tzinfo is not UTC
                or c.due_at.tzinfo is not UTC
                or (stopped is not None and stopped.tzinfo is not UTC)
            ):
                return orjson.dumps(self.to_json())
            clocks[name] = {"started_at": c.started_at, "due_at": c.due_at, "cycle": c.cycle,
                            "stopped_at": stopped, "status": c.status}  # fmt: skip
        timers = []
        for t in self.timers:
            if t.due_at.tzinfo is not UTC:
                return orjson.dumps(self.to_json())
            timers.append({"incident_id": t.incident_id, "clock": t.clock, "kind": t.kind,
                           "threshold": t.threshold, "cycle": t.cycle, "due_at": t.due_at})  # fmt: skip
        body = {"id": self.id, "state": self.state, "policy": self.policy, "severity": self.severity,
                "region": self.region, "reported_at": reported_at, "last_event_at": last_event_at,
                "seq": self.seq, "clocks": clocks, "timers": timers, "summary": self.summary,
                "source": self.source}  # fmt: skip
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Incident:
        """Inverse of to_json."""
        return cls(
            id=d["id"],
            state=d["state"],
            policy=d["policy"],
            severity=d["severity"],
            region=d["region"],
            reported_at=datetime.fromisoformat(d["reported_at"]),
            last_event_at=datetime.fromisoformat(d["last_event_at"]),
            seq=d["seq"],
            clocks={name: ClockState.from_json(c) for name, c in d["clocks"].items()},
            timers=[Timer.from_json(t) for t in d["timers"]],
            summary=d.get("summary"),
            source=d.get("source"),
        )


@dataclass(slots=True)
class Decision:
    """The result of handling one input or firing timers."""

    incident: Incident | None  # the new state; None for an unknown incident's rejected event
    accepted: bool  # True when the input belongs in the event log
    outputs: list[OutputEvent]  # in emission order

"""`incidents simulate`: run a JSONL file of input CloudEvents through the domain on a virtual clock."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from heapq import heappop, heappush
from math import inf
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from pydantic import ValidationError

from incident_contracts.decode import parse_event
from incident_contracts.envelope import OutputEvent, encode_output_lines
from incident_contracts.errors import DecodeError, SchemaError
from incident_contracts.fast import decode_fast
from incident_contracts.models import INPUT_ADAPTER
from incident_engine.domain import DomainError, Incident, PolicyRegistry, SlaDomain, reject_input
from incident_engine.domain.policy import DEFAULT_POLICY, POLICY_DIR
from incident_engine.gc_pause import gc_paused

Emit = Callable[[list[OutputEvent]], None]


class MalformedInput(ValueError):
    """A line of the input file that is not a JSON object; the message has the line number."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass
class Simulation:
    """A virtual-clock run of the domain: incidents in memory, a queue of (next due, incident) entries.

    The queue pops entries in (due, incident id) order, as one heap would, but is a heap per 64 s
    bucket of due times plus a heap of the bucket numbers: with hundreds of thousands of entries, one
    heap's pops, each a sift through 18 levels of tuples scattered in memory, cost three times more.
    Outputs are handed to `emit` in batches, in emission order.
    """

    domain: SlaDomain
    emit: Emit
    clock: datetime = field(default_factory=lambda: datetime.min.replace(tzinfo=UTC))
    incidents: dict[str, Incident] = field(default_factory=dict)
    seen_ids: set[str] = field(default_factory=set)
    events_read: int = 0
    outputs: int = 0
    _pending: list[OutputEvent] = field(default_factory=list)
    _buckets: dict[int, list[tuple[float, str]]] = field(default_factory=dict)  # heaps of (due, incident)
    _order: list[int] = field(default_factory=list)  # heap of the numbers of the non-empty buckets
    _next: float = inf  # the earliest due timestamp queued (POSIX seconds)
    _armed: dict[str, float] = field(default_factory=dict)  # incident -> due of its live queue entry

    def run(self, lines: Iterable[bytes], until: datetime) -> None:
        """Feed every non-blank line in order, then advance to `until`; raise MalformedInput on a bad line."""
        # One loop with local names: this is the hot path of a million-event run.
        seen, incidents, pending, armed = self.seen_ids, self.incidents, self._pending, self._armed
        buckets, order, apply, parse = (
            self._buckets,
            self._order,
            self.domain.apply,
            INPUT_ADAPTER.validate_json,
        )
        clock, earliest = self.clock, self._next
        read = 0
        try:
            for number, line in enumerate(lines, start=1):
                if not line or line.isspace():
                    continue
                raw = line.rstrip(b"\r\n")  # quoted as is in a rejection
                read += 1
                event: Any = decode_fast(raw)  # the common shape; parse_event decides the rest
                if event is None:
                    try:
                        event = parse(raw)  # the fast path of parse_event, which explains a failure below
                    except ValidationError:
                        try:
                            parse_event(raw)
                        except DecodeError as exc:
                            raise MalformedInput(number, exc.detail) from None
                        except SchemaError as exc:
                            pending.append(reject_input(exc, raw, clock))
                        continue
                event_id = event.id
                if event_id in seen:
                    continue  # a repeated id: exactly-once effect
                seen.add(event_id)
                moment = event.time
                if moment > clock:
                    if moment.tzinfo is not UTC:
                        moment = moment.astimezone(UTC)
                    if earliest <= moment.timestamp():
                        self.clock, self._next = clock, earliest
                        self.advance(moment)
                        earliest = self._next
                    clock = moment
                subject = event.subject
                known = incidents.get(subject)
                incident, _ = apply(known, event, clock, raw, pending)
                if incident is not None:
                    if known is None:
                        incidents[subject] = incident
                    timers = incident.timers
                    if timers:
                        # Heap keys are POSIX timestamps: floats compare far faster than datetimes,
                        # and distinct microseconds stay distinct floats for centuries around now.
                        key = timers[0][0].timestamp()
                        if armed.get(subject) != key:
                            armed[subject] = key
                            _enqueue(buckets, order, key, subject)
                            if key < earliest:
                                earliest = key
                    else:
                        armed.pop(subject, None)
                if len(pending) >= _BATCH:
                    self.flush()
        finally:
            self.clock, self._next = clock, earliest
            self.events_read += read
        self.advance(until.astimezone(UTC))
        self.flush()

    def advance(self, until: datetime) -> None:
        """Move the virtual clock to `until`, firing every timer due on the way at its own due moment."""
        buckets, order, armed, pending, incidents = (
            self._buckets,
            self._order,
            self._armed,
            self._pending,
            self.incidents,
        )
        plans, plan_of, limit, clock = self.domain.plans, self.domain.plan, until.timestamp(), self.clock
        while order:
            bucket = order[0]
            entries = buckets[bucket]
            if entries[0][0] > limit:
                break
            key, incident_id = heappop(entries)
            if not entries:
                del buckets[bucket]
                heappop(order)
            if armed.get(incident_id) != key:
                continue  # stale: the incident's timers changed since this entry was queued
            del armed[incident_id]
            incident = incidents[incident_id]
            timers = incident.timers
            if not timers:
                continue
            due = timers[0][0]
            if due > clock:
                clock = due
            plan = plans.get((incident.policy, incident.severity, incident.region)) or plan_of(incident)
            plan.fire(incident, clock, clock, pending)  # = domain.fire_due(incident, clock), batched
            timers = incident.timers
            if timers:
                key = timers[0][0].timestamp()
                armed[incident_id] = key
                _enqueue(buckets, order, key, incident_id)
        self._next = buckets[order[0]][0][0] if order else inf
        self.clock = until if until > clock else clock

    def flush(self) -> None:
        """Hand the pending outputs to `emit`."""
        if self._pending:
            self.outputs += len(self._pending)
            self.emit(self._pending)
            self._pending.clear()


_BATCH = 4096
_BUCKET_SHIFT = 6  # 64 s buckets: a few dozen entries each in a month-long run of a million events


def _enqueue(
    buckets: dict[int, list[tuple[float, str]]], order: list[int], key: float, incident: str
) -> None:
    """Queue (key, incident): into the heap of its bucket (a monotonic function of the key)."""
    bucket = int(key) >> _BUCKET_SHIFT
    entries = buckets.get(bucket)
    if entries is None:
        buckets[bucket] = [(key, incident)]
        heappush(order, bucket)
    else:
        heappush(entries, (key, incident))


def run_simulation(lines: Iterable[bytes], until: datetime, domain: SlaDomain, emit: Emit) -> Simulation:
    """Run `lines` (JSONL input CloudEvents) through `domain` up to `until`; return the finished run."""
    simulation = Simulation(domain, emit)
    # Hundreds of thousands of live incidents make the cyclic GC rescan them again and again, for
    # nothing: the simulation creates no reference cycles. Plain reference counting frees the rest.
    with gc_paused():
        simulation.run(lines, until)
    return simulation


def writer(stream: BinaryIO) -> Emit:
    """An Emit that writes each output CloudEvent as one JSON line."""

    def emit(outputs: list[OutputEvent]) -> None:
        stream.write(encode_output_lines(outputs))  # `o.to_json_line()` of each, in one call

    return emit


def parse_instant(text: str) -> datetime:
    """An RFC 3339 instant with an offset (`Z` allowed)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset (add Z or +hh:mm)")
    return moment


def simulate_command(
    file: Annotated[Path, typer.Argument(help="JSONL file of input CloudEvents (structured JSON).")],
    until: Annotated[
        str, typer.Option("--until", help="Advance the virtual clock to this RFC 3339 instant.")
    ],
    policy: Annotated[
        str, typer.Option("--policy", help="Default policy for incidents that name none.")
    ] = DEFAULT_POLICY,
    policies: Annotated[Path, typer.Option("--policies", help="Folder of policy YAML files.")] = POLICY_DIR,
) -> None:
    """Run input events through the SLA domain on a virtual clock; print the output events as JSONL."""
    try:
        end = parse_instant(until)
        domain = SlaDomain(PolicyRegistry.load(policies), policy)
    except (ValueError, DomainError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        with file.open("rb") as lines:
            run_simulation(lines, end, domain, writer(sys.stdout.buffer))
    except OSError as exc:
        typer.echo(f"error: cannot read {file}: {exc}", err=True)
        raise typer.Exit(2) from None
    except MalformedInput as exc:
        sys.stdout.flush()
        typer.echo(f"error: {file}:{exc.line}: malformed input: {exc.problem}", err=True)
        raise typer.Exit(1) from None

"""`incidents simulate`: run a JSONL file of input CloudEvents through the domain on a virtual clock."""

from __future__ import annotations

import gc
import heapq
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, BinaryIO

import typer
from pydantic import ValidationError

from incident_contracts.decode import parse_event
from incident_contracts.envelope import OutputEvent
from incident_contracts.errors import DecodeError, SchemaError
from incident_contracts.models import INPUT_ADAPTER
from incident_engine.domain import DomainError, Incident, PolicyRegistry, SlaDomain, reject_input
from incident_engine.domain.policy import DEFAULT_POLICY, POLICY_DIR

Emit = Callable[[list[OutputEvent]], None]


class MalformedInput(ValueError):
    """A line of the input file that is not a JSON object; the message has the line number."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass
class Simulation:
    """A virtual-clock run of the domain: incidents in memory, one heap of (next due, incident) entries.

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
    _heap: list[tuple[float, str]] = field(default_factory=list)  # (due timestamp, incident id)
    _armed: dict[str, float] = field(default_factory=dict)  # incident -> due of its live heap entry

    def run(self, lines: Iterable[bytes], until: datetime) -> None:
        """Feed every non-blank line in order, then advance to `until`; raise MalformedInput on a bad line."""
        # One loop with local names: this is the hot path of a million-event run.
        seen, incidents, heap, pending = self.seen_ids, self.incidents, self._heap, self._pending
        handle, arm, parse = self.domain.handle, self._arm, INPUT_ADAPTER.validate_json
        for number, raw in enumerate(lines, start=1):
            if not raw or raw.isspace():
                continue
            raw = raw.rstrip(b"\r\n")  # quoted as is in a rejection
            self.events_read += 1
            try:
                event = parse(raw)  # the fast path of parse_event, which explains a failure below
            except ValidationError:
                try:
                    parse_event(raw)
                except DecodeError as exc:
                    raise MalformedInput(number, exc.detail) from None
                except SchemaError as exc:
                    pending.append(reject_input(exc, raw, self.clock))
                continue
            if event.id in seen:
                continue  # a repeated id: exactly-once effect
            seen.add(event.id)
            moment = event.time
            if moment > self.clock:
                moment = moment.astimezone(UTC)
                if heap and heap[0][0] <= moment.timestamp():
                    self.advance(moment)
                self.clock = moment
            incident = incidents.get(event.subject)
            decision = handle(incident, event, self.clock, raw)
            if decision.incident is not None:
                if incident is None:
                    incidents[event.subject] = decision.incident
                if decision.incident.timers:
                    arm(decision.incident)
                else:
                    self._armed.pop(event.subject, None)
            pending += decision.outputs
            if len(pending) >= _BATCH:
                self.flush()
        self.advance(until.astimezone(UTC))
        self.flush()

    def advance(self, until: datetime) -> None:
        """Move the virtual clock to `until`, firing every timer due on the way at its own due moment."""
        heap, armed, pending, incidents = self._heap, self._armed, self._pending, self.incidents
        fire_due, limit = self.domain.fire_due, until.timestamp()
        while heap and heap[0][0] <= limit:
            key, incident_id = heapq.heappop(heap)
            if armed.get(incident_id) != key:
                continue  # stale: the incident's timers changed since this entry was pushed
            del armed[incident_id]
            incident = incidents[incident_id]
            if not incident.timers:
                continue
            due = incident.timers[0].due_at
            if due > self.clock:
                self.clock = due
            pending += fire_due(incident, self.clock).outputs
            if incident.timers:
                self._arm(incident)
        if until > self.clock:
            self.clock = until

    def flush(self) -> None:
        """Hand the pending outputs to `emit`."""
        if self._pending:
            self.outputs += len(self._pending)
            self.emit(self._pending)
            self._pending.clear()

    def _arm(self, incident: Incident) -> None:
        # Heap keys are POSIX timestamps: floats compare far faster than datetimes, and distinct
        # microseconds stay distinct floats for centuries around now.
        key = incident.timers[0].due_at.timestamp()
        if self._armed.get(incident.id) != key:
            self._armed[incident.id] = key
            heapq.heappush(self._heap, (key, incident.id))


_BATCH = 4096


def run_simulation(lines: Iterable[bytes], until: datetime, domain: SlaDomain, emit: Emit) -> Simulation:
    """Run `lines` (JSONL input CloudEvents) through `domain` up to `until`; return the finished run."""
    simulation = Simulation(domain, emit)
    # Hundreds of thousands of live incidents make the cyclic GC rescan them again and again, for
    # nothing: the simulation creates no reference cycles. Plain reference counting frees the rest.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        simulation.run(lines, until)
    finally:
        if gc_was_enabled:
            gc.enable()
    return simulation


def writer(stream: BinaryIO) -> Emit:
    """An Emit that writes each output CloudEvent as one JSON line."""

    def emit(outputs: list[OutputEvent]) -> None:
        stream.write(b"".join([o.to_json_bytes() + b"\n" for o in outputs]))

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

"""`incidents simulate`: run a JSONL file of input CloudEvents through the domain on a virtual clock.

There is no wall clock here: the contract's fixed bounds apply (lengths, control characters, years
2000..2099), the live topic's INCIDENTS_MAX_CLOCK_SKEW and INCIDENTS_MAX_EVENT_AGE do not (the
virtual clock is the events' own time), so old history is evaluated here as it is. Events are
identified by (source, id), as on the live topic.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from heapq import heappop, heappush
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer
from pydantic import ValidationError

from incident_contracts.decode import parse_event
from incident_contracts.envelope import OutputEvent, encode_output_lines
from incident_contracts.errors import DecodeError, SchemaError
from incident_contracts.fast import decode_struct, parse_time
from incident_contracts.models import INPUT_ADAPTER
from incident_engine.domain import DomainError, Incident, PolicyRegistry, SlaDomain, Timer, reject_input
from incident_engine.domain.policy import DEFAULT_POLICY, POLICY_DIR
from incident_engine.gc_pause import gc_paused
from incident_engine.timeforms import parse_instant

Emit = Callable[[list[OutputEvent]], None]


class MalformedInput(ValueError):
    """A line of the input file that is not a valid input event (in a strict run); the message has the
    line number."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


# A queue entry: (due as a POSIX timestamp, incident id, the incident, the timer it was queued for).
Entry = tuple[float, str, Incident, Timer]
_NEVER = datetime.max.replace(tzinfo=UTC)


@dataclass
class Simulation:
    """A virtual-clock run of the domain: incidents in memory, a queue of their next due timers.

    The queue pops entries in (due, incident id) order, as one heap would, but is a heap per 64 s
    bucket of due times plus a heap of the bucket numbers: with hundreds of thousands of entries, one
    heap's pops, each a sift through 18 levels of tuples scattered in memory, cost three times more.
    An incident is queued again whenever its first pending timer changes; an entry whose timer is
    no longer the incident's first is stale and skipped (the entry carries the incident, so neither
    costs a look-up in a table of every incident). Outputs are handed to `emit` in batches, in
    emission order.
    """

    domain: SlaDomain
    emit: Emit
    clock: datetime = field(default_factory=lambda: datetime.min.replace(tzinfo=UTC))
    incidents: dict[str, Incident] = field(default_factory=dict)
    seen_ids: set[tuple[str, str]] = field(default_factory=set)  # (source, id): the CloudEvents identity
    events_read: int = 0
    outputs: int = 0
    strict: bool = False  # a line that is not a valid input event raises MalformedInput
    bad_lines: list[int] = field(default_factory=list)  # numbers of the lines rejected as decode/schema
    _pending: list[OutputEvent] = field(default_factory=list)
    _buckets: dict[int, list[Entry]] = field(default_factory=dict)  # heaps of entries
    _order: list[int] = field(default_factory=list)  # heap of the numbers of the non-empty buckets
    _next: datetime = _NEVER  # the earliest due queued (a stale entry's, maybe: never later)

    def run(self, lines: Iterable[bytes], until: datetime) -> None:
        """Feed every non-blank line in order, then advance to `until`.

        A line that is not a valid input event is an `incident.rejected` output (`decode`: not JSON,
        its detail naming the line; `schema`: not a valid event), or with `strict` a MalformedInput."""
        # One loop with local names: this is the hot path of a million-event run.
        seen, incidents, pending = self.seen_ids, self.incidents, self._pending
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
                if not line or (line[0] != 123 and line.isspace()):  # 123: b"{", the common start
                    continue
                raw = line.rstrip(b"\r\n")  # quoted as is in a rejection
                read += 1
                event: Any
                try:  # decode_fast(raw), inline: the common shape; parse_event decides the rest
                    event = decode_struct(raw)
                    event.time = parse_time(event.time)
                except ValueError:  # msgspec.DecodeError, UnicodeDecodeError, or e.g. 2025-02-30
                    event = None
                if event is None:
                    try:
                        event = parse(raw)  # the fast path of parse_event, which explains a failure below
                    except ValidationError:
                        try:
                            parse_event(raw)
                        except (DecodeError, SchemaError) as exc:
                            self._reject(number, exc, raw, clock)
                        continue
                identity = (event.source, event.id)
                if identity in seen:
                    continue  # a repeated (source, id): exactly-once effect
                seen.add(identity)
                moment = event.time
                if moment > clock:
                    if moment.tzinfo is not UTC:
                        moment = moment.astimezone(UTC)
                    if earliest < moment:
                        self.clock, self._next = clock, earliest
                        self.advance(moment, before=True)
                        earliest = self._next
                    clock = moment
                subject = event.subject
                incident = incidents.get(subject)
                if incident is None:
                    first = None
                    incident, _ = apply(None, event, clock, raw, pending)
                    if incident is not None:
                        incidents[subject] = incident
                        timers = incident.timers
                else:
                    timers = incident.timers
                    first = timers[0] if timers else None
                    apply(incident, event, clock, raw, pending)  # updates `timers` in place
                if incident is not None and timers and timers[0] is not first:
                    timer = timers[0]
                    _enqueue(buckets, order, subject, incident, timer)
                    if timer[0] < earliest:
                        earliest = timer[0]
                if len(pending) >= _BATCH:
                    self.flush()
        finally:
            self.clock, self._next = clock, earliest
            self.events_read += read
        self.advance(until.astimezone(UTC))
        self.flush()

    def _reject(self, number: int, error: DecodeError | SchemaError, raw: bytes, clock: datetime) -> None:
        """A bad line: a rejection (a decode one names the line: there is no event id to name), or the
        end of a strict run."""
        if self.strict:
            raise MalformedInput(number, f"{error.reason}: {error.detail}")
        self.bad_lines.append(number)
        origin = None
        if isinstance(error, DecodeError):
            detail = error.detail.replace(": line 1 column ", " at column ")  # the line is one line
            error = DecodeError(f"line {number}: {detail}", event_id=error.event_id, subject=error.subject)
            origin = f"line/{number}"
        self._pending.append(reject_input(error, raw, clock, origin=origin))

    def advance(self, until: datetime, *, before: bool = False) -> None:
        """Move the virtual clock to `until`, firing every timer due on the way at its own due moment.

        With `before`, a timer due at `until` itself stays pending: an event stamped `until` is about
        to be applied, and at a threshold's very moment the action is in time (design §5).
        """
        buckets, order, pending = self._buckets, self._order, self._pending
        domain, limit, clock = self.domain, until.timestamp(), self.clock
        while order:
            bucket = order[0]
            entries = buckets[bucket]
            key = entries[0][0]
            if key > limit or (before and key == limit):
                break
            _, incident_id, incident, timer = heappop(entries)
            if not entries:
                del buckets[bucket]
                heappop(order)
            timers = incident.timers
            if not timers or timers[0] is not timer:
                continue  # stale: the incident's first timer changed since this entry was queued
            due = timer[0]
            if due > clock:
                clock = due
            plan = incident.plan
            if plan is None or plan.owner is not domain:
                plan = domain.plan(incident)
            plan.fire(incident, clock, clock, pending)  # = domain.fire_due(incident, clock), batched
            timers = incident.timers
            if timers:
                _enqueue(buckets, order, incident_id, incident, timers[0])
        self._next = buckets[order[0]][0][3][0] if order else _NEVER
        self.clock = until if until > clock else clock

    def flush(self) -> None:
        """Hand the pending outputs to `emit`."""
        if self._pending:
            self.outputs += len(self._pending)
            self.emit(self._pending)
            self._pending.clear()


_BATCH = 512  # outputs per emit: still in the CPU's cache when serialized and freed (4096: 10 % slower)
_BUCKET_SHIFT = 6  # 64 s buckets: a few dozen entries each in a month-long run of a million events


def _enqueue(
    buckets: dict[int, list[Entry]], order: list[int], incident_id: str, incident: Incident, timer: Timer
) -> None:
    """Queue an incident for its first pending `timer`, in the heap of its bucket (a monotonic function
    of the key). Keys are POSIX timestamps: floats compare faster than datetimes, and distinct
    microseconds stay distinct floats for centuries around now."""
    key = timer[0].timestamp()
    bucket = int(key) >> _BUCKET_SHIFT
    entries = buckets.get(bucket)
    if entries is None:
        buckets[bucket] = [(key, incident_id, incident, timer)]
        heappush(order, bucket)
    else:
        heappush(entries, (key, incident_id, incident, timer))


def run_simulation(
    lines: Iterable[bytes], until: datetime, domain: SlaDomain, emit: Emit, *, strict: bool = False
) -> Simulation:
    """Run `lines` (JSONL input CloudEvents) through `domain` up to `until`; return the finished run."""
    simulation = Simulation(domain, emit, strict=strict)
    # Hundreds of thousands of live incidents make the cyclic GC rescan them again and again, for
    # nothing: the simulation creates no reference cycles. Plain reference counting frees the rest.
    with gc_paused(keep=True):
        simulation.run(lines, until)
    return simulation


def writer(stream: BinaryIO) -> Emit:
    """An Emit that writes each output CloudEvent as one JSON line."""

    def emit(outputs: list[OutputEvent]) -> None:
        stream.write(encode_output_lines(outputs))  # `o.to_json_line()` of each, in one call

    return emit


def simulate_command(
    file: Annotated[Path, typer.Argument(help="JSONL file of input CloudEvents (structured JSON).")],
    until: Annotated[
        str,
        typer.Option(
            "--until", help="Advance the virtual clock to this instant (a bare date is midnight UTC)."
        ),
    ],
    policy: Annotated[
        str,
        typer.Option(
            "--policy", envvar="INCIDENTS_DEFAULT_POLICY", help="Default policy for incidents that name none."
        ),
    ] = DEFAULT_POLICY,
    policies: Annotated[
        Path,
        typer.Option(
            "--policies",
            envvar="INCIDENTS_POLICY_DIR",
            help="Folder of policy YAML files (the engine's: the same variable it reads).",
        ),
    ] = POLICY_DIR,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="Stop at the first line that is not a valid input event (exit 1) instead of printing"
            " its rejection.",
        ),
    ] = False,
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
            run = run_simulation(lines, end, domain, writer(sys.stdout.buffer), strict=strict)
    except OSError as exc:
        typer.echo(f"error: cannot read {file}: {exc}", err=True)
        raise typer.Exit(2) from None
    except MalformedInput as exc:
        sys.stdout.flush()
        typer.echo(f"error: {file}:{exc.line}: {exc.problem} (--strict: stopped here)", err=True)
        raise typer.Exit(1) from None
    if run.bad_lines:
        shown = ", ".join(map(str, run.bad_lines[:10])) + (", …" if len(run.bad_lines) > 10 else "")
        typer.echo(
            f"note: {file}: {len(run.bad_lines)} line(s) not valid input events, printed as"
            f" incident.rejected outputs: {shown} (--strict stops at the first instead)",
            err=True,
        )

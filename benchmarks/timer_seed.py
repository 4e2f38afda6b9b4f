"""Seed a fresh database with many open incidents and their armed timers, straight into PostgreSQL.

Going through Kafka would take longer than the benchmarks themselves, so the rows are COPYed in.
They stay consistent with the schema and with `Incident.to_json`: a handful of template incidents
are built by the real domain (critical incidents, 24x7 clocks, so shifting every moment by the same
amount gives exactly the state the domain would have built at that moment), and each seeded incident
is a template with its id and moments replaced. Partitions follow Kafka's default partitioner, so an
event about a seeded incident would land on the partition that owns its timer.
(The event log is not seeded: `incidents replay` would report these incidents as unlogged.)
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
from aiokafka.partitioner import murmur2

from incident_contracts import parse_event
from incident_engine.adapters.postgres.migrate import migrate
from incident_engine.domain import Incident, PolicyRegistry, SlaDomain
from incident_engine.entrypoints.commands import build_event

_ORIGIN = datetime(2026, 1, 5, 3, 0, tzinfo=UTC)
_MOMENT = re.compile(r'"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?\+00:00)"')
_PLACEHOLDER = "TPL-0000"


@dataclass(frozen=True)
class Template:
    """One incident body as text, with its id and moments as format fields."""

    text: str  # str.format template: {id}, {m0}, {m1}, ...
    offsets: tuple[timedelta, ...]  # moment k = reported_at + offsets[k]
    first_due: timedelta  # next_due - reported_at
    state: str
    policy: str
    region: str
    seq: int
    last_event: timedelta  # last_event_at - reported_at

    def body(self, incident_id: str, reported_at: datetime) -> str:
        """The JSON body of an incident reported at `reported_at`."""
        moments = {f"m{k}": (reported_at + off).isoformat() for k, off in enumerate(self.offsets)}
        return self.text.format(id=incident_id, **moments)


def templates() -> list[Template]:
    """Critical incidents of both policies and every region, just reported or acknowledged."""
    domain = SlaDomain(PolicyRegistry.load())
    out = []
    for policy in ("livepro-1", "livepro-2"):
        for region in ("au", "us", "uk"):
            for acked in (False, True):
                incident = _build(domain, policy, region, acked)
                out.append(_template(incident))
    return out


def _build(domain: SlaDomain, policy: str, region: str, acked: bool) -> Incident:
    reported = build_event(
        "reported", _PLACEHOLDER, source="/channels/phone/" + region, time=_ORIGIN, severity="critical",
        region=region, summary="seeded", extra={"policy": policy},
    )  # fmt: skip
    decision = domain.handle(None, parse_event(orjson.dumps(reported), []), _ORIGIN)
    incident = decision.incident
    assert incident is not None
    if acked:
        at = _ORIGIN + timedelta(minutes=3)
        ack = build_event(
            "acknowledged", _PLACEHOLDER, source="/channels/email", time=at, severity=None, region=None,
            summary=None, extra={},
        )  # fmt: skip
        incident = domain.handle(incident, parse_event(orjson.dumps(ack), []), at).incident
        assert incident is not None
    return incident


def _template(incident: Incident) -> Template:
    text = orjson.dumps(incident.to_json()).decode()
    text = text.replace("{", "{{").replace("}", "}}").replace(_PLACEHOLDER, "{id}")
    offsets: list[timedelta] = []

    def field(match: re.Match[str]) -> str:
        off = datetime.fromisoformat(match.group(1)) - _ORIGIN
        if off not in offsets:
            offsets.append(off)
        return f'"{{m{offsets.index(off)}}}"'

    text = _MOMENT.sub(field, text)
    assert incident.next_due is not None
    return Template(
        text, tuple(offsets), incident.next_due - _ORIGIN, incident.state, incident.policy,
        incident.region, incident.seq, incident.last_event_at - _ORIGIN,
    )  # fmt: skip


def partition_of(key: str, partitions: int) -> int:
    """Kafka's default partition of a key (murmur2, as aiokafka and the Java client)."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def rows(
    count: int, due_from: datetime, due_span: timedelta, partitions: int, prefix: str = "SEED-"
) -> Iterator[tuple[tuple[object, ...], tuple[object, ...]]]:
    """(incident row, timer row) pairs: next timers due evenly over [due_from, due_from + due_span)."""
    kinds = templates()
    step = due_span / max(count, 1)
    for n in range(count):
        tpl = kinds[n % len(kinds)]
        incident_id = f"{prefix}{n:08d}"
        due = due_from + step * n
        reported = due - tpl.first_due
        partition = partition_of(incident_id, partitions)
        yield (
            (incident_id, tpl.state, tpl.policy, "critical", tpl.region, tpl.seq, partition, reported,
             reported + tpl.last_event, tpl.body(incident_id, reported)),
            (incident_id, partition, due, None),
        )  # fmt: skip


async def seed(
    dsn: str,
    count: int,
    due_from: datetime,
    due_span: timedelta,
    partitions: int = 6,
    chunk: int = 100_000,
) -> float:
    """Migrate the (fresh) database and COPY `count` open incidents with their timers; return seconds."""
    started = time.perf_counter()
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        # Indexes are built once after the COPY (much faster than row by row): whatever secondary
        # indexes the migrations left on the two tables, read back and re-created as they were.
        indexes = await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
            " AND tablename IN ('incidents', 'timers') AND indexname NOT LIKE '%\\_pkey'"
        )
        for index in indexes:
            await conn.execute(f'DROP INDEX "{index["indexname"]}"')
        await conn.execute(
            "ALTER TABLE timers DROP CONSTRAINT timers_pkey;"
            "ALTER TABLE incidents DROP CONSTRAINT incidents_pkey"
        )
        incidents: list[tuple[object, ...]] = []
        timers: list[tuple[object, ...]] = []
        for incident, timer in rows(count, due_from, due_span, partitions):
            incidents.append(incident)
            timers.append(timer)
            if len(incidents) >= chunk:
                await _copy(conn, incidents, timers)
                incidents, timers = [], []
        await _copy(conn, incidents, timers)
        await conn.execute(
            "ALTER TABLE incidents ADD PRIMARY KEY (incident_id);"
            "ALTER TABLE timers ADD PRIMARY KEY (incident_id);"
        )
        for index in indexes:
            await conn.execute(index["indexdef"])
        await conn.execute("ANALYZE incidents; ANALYZE timers")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def _copy(
    conn: asyncpg.Connection, incidents: list[tuple[object, ...]], timers: list[tuple[object, ...]]
) -> None:
    if incidents:
        await conn.copy_records_to_table("incidents", records=incidents)
        await conn.copy_records_to_table("timers", records=timers)


async def seeded_and_empty(server_url: str, count: int) -> tuple[str, str]:
    """Two fresh databases on a server: `count` incidents with timers due in hours (not during a
    benchmark), and an empty migrated one for the baseline. Returns their DSNs."""
    from devstack.stack import fresh_database

    dsn = await fresh_database(server_url)
    seconds = await seed(dsn, count, datetime.now(UTC) + timedelta(hours=2), timedelta(hours=4))
    print(f"seeded {count:,} incidents with timers in {seconds:.1f}s", file=sys.stderr)
    empty = await fresh_database(server_url)
    await migrate(empty)
    return dsn, empty

"""A scripted history turned into an event log, as an engine that is never late would have written it.

For tests and benchmarks that need a log with controlled processing moments: each input event is
applied at its own time plus `lag`, every timer fires at its due moment (a recorded firing), and
the rows are written with COPY into a migrated database.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson

from incident_contracts.constants import INCIDENT_REJECTED
from incident_engine.domain import Incident, SlaDomain
from incident_engine.replay import parse_logged

LOG_COLUMNS = (
    "incident_id", "seq", "event_id", "type", "source", "event_time", "processed_at",
    "kafka_partition", "kafka_offset", "envelope",
)  # fmt: skip
PARTITIONS = 6


@dataclass
class RecordedLog:
    """Log rows (LOG_COLUMNS order), timer firings (incident, moment, partition), final states."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    firings: list[tuple[str, datetime, int]] = field(default_factory=list)
    incidents: dict[str, Incident] = field(default_factory=dict)


def record_history(
    domain: SlaDomain,
    events: Iterable[Mapping[str, Any]],
    until: datetime,
    *,
    lag: timedelta = timedelta(0),
    log: RecordedLog | None = None,
) -> RecordedLog:
    """Run input CloudEvents (dicts, any order) through `domain` per incident, on time, up to `until`."""
    log = log if log is not None else RecordedLog()
    by_incident: dict[str, list[tuple[datetime, bytes]]] = defaultdict(list)
    for event in events:
        raw = orjson.dumps(event, option=orjson.OPT_UTC_Z)
        by_incident[event["subject"]].append((parse_logged(raw).time.astimezone(UTC), raw))
    for incident_id, steps in by_incident.items():
        steps.sort(key=lambda step: step[0])
        _record_incident(domain, incident_id, steps, until, lag, log)
    return log


def _record_incident(
    domain: SlaDomain,
    incident_id: str,
    steps: list[tuple[datetime, bytes]],
    until: datetime,
    lag: timedelta,
    log: RecordedLog,
) -> None:
    partition = zlib.crc32(incident_id.encode()) % PARTITIONS
    incident: Incident | None = None
    seen: set[str] = set()
    for at, raw in steps:
        moment = at + lag
        if incident is not None:
            _fire_until(domain, incident, moment, partition, log, strict=True)
        event = parse_logged(raw)
        if event.id in seen:
            continue  # a repeated id is dropped silently, as the engine does
        seen.add(event.id)
        decision = domain.handle(incident, event, moment, raw)
        if decision.accepted and decision.incident is not None:
            incident = decision.incident
            log.rows.append((
                incident_id, incident.seq, event.id, event.type, event.source, event.time, moment,
                partition, len(log.rows), raw.decode(),
            ))  # fmt: skip
        elif incident is not None and any(o.type != INCIDENT_REJECTED for o in decision.outputs):
            log.firings.append((incident_id, moment, partition))  # fired while refusing the event
    if incident is not None:
        _fire_until(domain, incident, until, partition, log, strict=False)
        log.incidents[incident_id] = incident


def _fire_until(
    domain: SlaDomain, incident: Incident, until: datetime, partition: int, log: RecordedLog, *, strict: bool
) -> None:
    while incident.timers:
        due = incident.timers[0].due_at
        if due > until or (strict and due == until):
            return
        domain.fire_due(incident, due)
        log.firings.append((incident.id, due, partition))


async def write_log(dsn: str, log: RecordedLog) -> None:
    """COPY the rows and firings into the (migrated, empty) database at `dsn`."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("event_log", records=log.rows, columns=LOG_COLUMNS)
            firings = sorted(set(log.firings))
            await conn.copy_records_to_table(
                "timer_firings", records=firings, columns=("incident_id", "fired_at", "kafka_partition")
            )
        await conn.execute("ANALYZE event_log; ANALYZE timer_firings")
    finally:
        await conn.close()


async def write_projections(dsn: str, log: RecordedLog) -> None:
    """COPY the final state of each recorded incident (projection and timer rows), as the engine
    would hold them after the log: `incidents replay --check` then finds nothing to report."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            incidents = [
                (inc.id, inc.state, inc.policy, inc.severity, inc.region, inc.seq,
                 zlib.crc32(inc.id.encode()) % PARTITIONS, inc.reported_at, inc.last_event_at,
                 orjson.dumps(inc.to_json()).decode())
                for inc in log.incidents.values()
            ]  # fmt: skip
            await conn.copy_records_to_table(
                "incidents",
                records=incidents,
                columns=("incident_id", "state", "policy", "severity", "region", "seq", "kafka_partition",
                         "reported_at", "updated_at", "body"),
            )  # fmt: skip
            timers = [
                (inc.id, zlib.crc32(inc.id.encode()) % PARTITIONS, inc.next_due)
                for inc in log.incidents.values()
                if inc.next_due is not None
            ]
            await conn.copy_records_to_table(
                "timers", records=timers, columns=("incident_id", "kafka_partition", "due_at")
            )
    finally:
        await conn.close()


async def seeded_database(
    server_url: str, domain: SlaDomain, events: Iterable[Mapping[str, Any]], until: datetime
) -> tuple[str, RecordedLog]:
    """A fresh migrated database on the server holding the on-time log of `events`; its DSN and the log."""
    from devstack.stack import fresh_database
    from incident_engine.adapters.postgres.migrate import migrate

    dsn = await fresh_database(server_url)
    await migrate(dsn)
    log = record_history(domain, events, until)
    await write_log(dsn, log)
    return dsn, log

"""The event log read from PostgreSQL as a stream: one snapshot, a server-side cursor, chunk by chunk.

Rows come in (incident_id, seq) order and are handed over grouped by incident, with the incident's
recorded timer firings, so a replay never holds more than one chunk of the log in memory.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from incident_engine.adapters.archive_files import ArchivedIncident, read_archive
from incident_engine.replay import Firing

# Positions in a log row: the replay reads the first two (see incident_engine.replay.Step).
MOMENT, ENVELOPE, INCIDENT, TYPE, EVENT_TIME = range(5)
_COLUMNS = "l.processed_at, l.envelope::text, l.incident_id, l.type, l.event_time"

Group = tuple[str, list[Any], list[Firing]]  # (incident id, its log rows in seq order, its firings)


class EmptyLog(LookupError):
    """Nothing in the event log (or nothing in the asked scope) to replay."""


@dataclass(frozen=True)
class LogScope:
    """Which part of the log to read: one incident, or the incidents reported in a window.

    `processed_until` drops what the engine applied after it (an as-of replay in processing time),
    `event_until` the events whose own time is after it (in event time). With `down_since`,
    critical incidents reported before `reported_since` and not yet restored or failed over by then
    are included too (they still count as downtime in the window).
    """

    incident: str | None = None
    reported_since: datetime | None = None
    reported_until: datetime | None = None
    processed_until: datetime | None = None
    severity: str | None = None
    region: str | None = None
    down_since: bool = False
    event_until: datetime | None = None

    def incidents_sql(self, args: list[Any]) -> str | None:
        """A subquery of the chosen incident ids (None: every incident); appends its parameters."""
        conditions = []

        def param(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if self.incident is not None:
            conditions.append(f"r.incident_id = {param(self.incident)}")
        if self.reported_until is not None:
            conditions.append(f"r.event_time < {param(self.reported_until)}")
        if self.severity is not None:
            conditions.append(f"r.envelope->'data'->>'severity' = {param(self.severity)}")
        if self.region is not None:
            conditions.append(f"r.envelope->'data'->>'region' = {param(self.region)}")
        if self.reported_since is not None:
            since = param(self.reported_since)
            recent = f"r.event_time >= {since}"
            if self.down_since:
                recent = (
                    f"({recent} OR (r.envelope->'data'->>'severity' = 'critical' AND NOT EXISTS ("
                    "SELECT 1 FROM event_log d WHERE d.incident_id = r.incident_id"
                    " AND d.type IN ('incident.failed_over', 'incident.restored')"
                    f" AND d.event_time < {since})))"
                )
            conditions.append(recent)
        if not conditions:
            return None
        return "SELECT r.incident_id FROM event_log r WHERE r.seq = 1 AND " + " AND ".join(conditions)

    def archived_group(self, archived: ArchivedIncident) -> Group | None:
        """The group of an archived incident as `stream_groups` would give it, None when out of scope
        (the same conditions as `incidents_sql` and `log_sql`, on the archived rows)."""
        rows = archived.rows
        if not rows or (self.incident is not None and archived.incident_id != self.incident):
            return None
        first = rows[0]
        data = orjson.loads(first["envelope"]).get("data") or {}
        if self.reported_until is not None and first["event_time"] >= self.reported_until:
            return None
        if self.severity is not None and data.get("severity") != self.severity:
            return None
        if self.region is not None and data.get("region") != self.region:
            return None
        since = self.reported_since
        if since is not None and first["event_time"] < since:
            down = (
                self.down_since
                and data.get("severity") == "critical"
                and not any(
                    r["type"] in ("incident.failed_over", "incident.restored") and r["event_time"] < since
                    for r in rows
                )
            )
            if not down:
                return None
        until, event_until = self.processed_until, self.event_until
        picked = [
            (r["processed_at"], r["envelope"], r["incident_id"], r["type"], r["event_time"])
            for r in rows
            if (until is None or r["processed_at"] <= until)
            and (event_until is None or r["event_time"] <= event_until)
        ]
        fired: list[Firing] = [
            (moment, fire_until, breach_until)
            for moment, _, fire_until, breach_until in archived.firings
            if until is None or moment <= until
        ]
        return (archived.incident_id, picked, fired) if picked else None

    def log_sql(self, what: str, order: bool) -> tuple[str, list[Any]]:
        """`SELECT what FROM event_log l` restricted to the scope (and ordered for grouping)."""
        args: list[Any] = []
        where = []
        chosen = self.incidents_sql(args)
        if chosen is not None:
            where.append(f"l.incident_id IN ({chosen})")
        if self.processed_until is not None:
            args.append(self.processed_until)
            where.append(f"l.processed_at <= ${len(args)}")
        if self.event_until is not None:
            args.append(self.event_until)
            where.append(f"l.event_time <= ${len(args)}")
        sql = f"SELECT {what} FROM event_log l"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if order:
            sql += " ORDER BY l.incident_id, l.seq"
        return sql, args

    def firings_sql(self) -> tuple[str, list[Any]]:
        """The recorded timer firings of the scope's incidents."""
        args: list[Any] = []
        chosen = self.incidents_sql(args)
        sql = "SELECT f.incident_id, f.fired_at, f.fire_until, f.breach_until FROM timer_firings f"
        where = [] if chosen is None else [f"f.incident_id IN ({chosen})"]
        if self.processed_until is not None:
            args.append(self.processed_until)
            where.append(f"f.fired_at <= ${len(args)}")
        if where:
            sql += " WHERE " + " AND ".join(where)
        return sql + " ORDER BY f.incident_id, f.fired_at", args


@dataclass
class LogSummary:
    """How much of the log a scope holds: events, and the first and last moments the engine applied one."""

    events: int
    first: datetime | None
    last: datetime | None


async def summarize(conn: asyncpg.Connection, scope: LogScope) -> LogSummary:
    """Count the scope's events (for the progress bar and the empty-log error)."""
    sql, args = scope.log_sql("count(*), min(l.processed_at), max(l.processed_at)", order=False)
    row = await conn.fetchrow(sql, *args)
    assert row is not None  # an aggregate always returns one row
    return LogSummary(int(row[0]), row[1], row[2])


async def read_firings(conn: asyncpg.Connection, scope: LogScope) -> dict[str, list[Firing]]:
    """Every recorded timer firing of the scope, by incident, in time order (see `replay.Firing`)."""
    sql, args = scope.firings_sql()
    fired: dict[str, list[Firing]] = defaultdict(list)
    for incident_id, moment, until, breach_until in await conn.fetch(sql, *args):
        fired[incident_id].append(moment if until is None else (moment, until, breach_until))
    return fired


async def stream_groups(
    conn: asyncpg.Connection,
    scope: LogScope,
    firings: dict[str, list[Firing]],
    *,
    chunk: int = 20_000,
) -> AsyncIterator[tuple[list[Group], int]]:
    """Yield (complete incident groups, rows read) chunk by chunk; call inside a transaction."""
    sql, args = scope.log_sql(_COLUMNS, order=True)
    cursor = await conn.cursor(sql, *args)
    current_id: str | None = None
    current: list[Any] = []
    no_firings: list[Firing] = []
    while rows := await cursor.fetch(chunk):
        groups: list[Group] = []
        for row in rows:
            incident_id = row[INCIDENT]
            if incident_id != current_id:
                if current_id is not None:
                    groups.append((current_id, current, firings.get(current_id, no_firings)))
                current_id, current = incident_id, []
            current.append(row)
        yield groups, len(rows)
    if current_id is not None:
        yield [(current_id, current, firings.get(current_id, no_firings))], 0


Visit = Callable[[list[Group]], None]


async def scan(
    dsn: str,
    scope: LogScope,
    visit: Visit,
    *,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 20_000,
    archive: Path | None = None,
) -> LogSummary:
    """Read the scope from the archive files (when given) first, then from one consistent snapshot of
    the database, handing each chunk of groups to `visit`.

    An incident found in the archive is taken from there only (its rows may still be in the database
    when an archive run stopped between writing the file and committing). `progress(done, total)`
    follows the rows read. Raise EmptyLog when the scope holds no event.
    """
    archived: set[str] = set()
    archived_events = 0
    from_files = LogSummary(0, None, None)
    if archive is not None:
        for incident in read_archive(archive):
            archived.add(incident.incident_id)
            archived_events += len(incident.rows)
            group = scope.archived_group(incident)
            if group is None:
                continue
            visit([group])
            moments = [row[MOMENT] for row in group[1]]
            from_files.events += len(moments)
            from_files.first = min(moments[0], from_files.first or moments[0])
            from_files.last = max(moments[-1], from_files.last or moments[-1])
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            summary = await summarize(conn, scope)
            if summary.events == 0 and from_files.events == 0:
                total = await conn.fetchval("SELECT count(*) FROM event_log")
                raise EmptyLog(_empty_message(scope, total + archived_events))
            firings = await read_firings(conn, scope)
            done = from_files.events
            total = summary.events + from_files.events
            async for groups, rows in stream_groups(conn, scope, firings, chunk=chunk):
                visit([g for g in groups if g[0] not in archived] if archived else groups)
                done += rows
                if progress is not None:
                    progress(done, total)
    finally:
        await conn.close()
    return _merged(summary, from_files)


def _merged(db: LogSummary, files: LogSummary) -> LogSummary:
    firsts = [m for m in (db.first, files.first) if m is not None]
    lasts = [m for m in (db.last, files.last) if m is not None]
    return LogSummary(db.events + files.events, min(firsts, default=None), max(lasts, default=None))


def _empty_message(scope: LogScope, total: int) -> str:
    if total == 0:
        return "the event log is empty: nothing to replay (has the engine processed any event?)"
    as_of = scope.event_until or scope.processed_until
    by_then = "" if as_of is None else f" by {as_of:%Y-%m-%d %H:%M:%S} UTC"
    if scope.incident is not None:
        return f"no incident {scope.incident!r} in the event log (or nothing logged for it{by_then})"
    if by_then:
        done = "happened" if scope.event_until else "had been processed"
        return f"none of the {total:,} logged events {done}{by_then}"
    if scope.reported_since is not None or scope.reported_until is not None:
        since, until = scope.reported_since, scope.reported_until
        window = f"from {since:%Y-%m-%d %H:%M} UTC" if since else ""
        window += f"{' ' if window else ''}before {until:%Y-%m-%d %H:%M} UTC" if until else ""
        return (
            f"no incident reported {window} (the log holds {total:,} events);"
            " choose the period with --month YYYY-MM or --since/--until"
        )
    return f"none of the {total:,} logged events falls in the asked scope"

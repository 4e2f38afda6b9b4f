"""`incidents db archive --before M`: closed months of the event log to files, then out of PostgreSQL.

A month is the UTC month of an incident's `incident.reported` event time (as `report --month`), so an
incident's rows never straddle two months. A month is archived only when every incident of it is
restored (terminal: nothing can change it any more) and none of their outputs waits in the outbox;
then its log rows and timer firings are written to `event-log-YYYY-MM.jsonl.gz`, and its log rows,
firings, projections and timer rows are deleted in the same transaction that checked all this. The
file is on disk (fsynced) before that transaction commits, so a crash leaves at worst rows that are
both archived and still in the database; readers take such an incident from the file once.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import asyncpg
import typer
from rich.console import Console

from incident_engine.adapters.archive_files import (
    ArchivedIncident,
    ArchiveError,
    file_name,
    read_month,
    write_month,
)
from incident_engine.adapters.outbox_codec import decode_messages
from incident_engine.config import Settings, without_credentials
from incident_engine.timeforms import parse_month_start
from incident_platform.cli_errors import UNREACHABLE, postgres_unreachable

console = Console(stderr=True, highlight=False, soft_wrap=True)
_ARCHIVE_LOCK = 0x51A_A3C1  # any constant: serializes concurrent archive runs
_MONTH = "to_char(date_trunc('month', reported_at AT TIME ZONE 'UTC'), 'YYYY-MM')"


class ArchiveRefused(RuntimeError):
    """A month that may not be archived (open incidents, outputs not relayed, not over yet)."""


@dataclass
class Archived:
    """What one month's archive moved."""

    month: str
    incidents: int
    events: int
    firings: int
    path: Path


def _month_after(moment: datetime) -> datetime:
    return datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)


async def archive_before(
    dsn: str, folder: Path, before: datetime, now: datetime, live_horizon: timedelta = timedelta(0)
) -> list[Archived]:
    """Archive every month before `before` that holds incidents; refuse (archiving nothing) when one
    of them is open, or still within `live_horizon` (how old an event the live topic takes: a
    report redelivered then would no longer be known as a duplicate, and would open the incident
    again). Months are taken oldest first, one transaction each."""
    current = datetime(now.year, now.month, 1, tzinfo=UTC)
    if before > current:
        raise ArchiveRefused(
            f"--before {before:%Y-%m} would take the current month {current:%Y-%m}, which is still open;"
            f" the latest is --before {current:%Y-%m}"
        )
    if before > now - live_horizon:
        latest = now - live_horizon
        raise ArchiveRefused(
            f"--before {before:%Y-%m} would take events the live topic still accepts (up to"
            f" {latest:%Y-%m-%d}, INCIDENTS_MAX_EVENT_AGE + INCIDENTS_MAX_CLOCK_SKEW): a report"
            f" redelivered now would open its incident again; the latest is --before {latest:%Y-%m}"
        )
    conn = await asyncpg.connect(dsn)
    try:
        months = await conn.fetch(
            f"SELECT {_MONTH} AS month, count(*) FILTER (WHERE state <> 'restored') AS open,"
            " min(incident_id) FILTER (WHERE state <> 'restored') AS example"
            f" FROM incidents WHERE reported_at < $1 GROUP BY 1 ORDER BY 1",
            before,
        )
        still_open = [m for m in months if m["open"]]
        if still_open:
            listed = ", ".join(f"{m['month']} ({m['open']}, e.g. {m['example']!r})" for m in still_open)
            raise ArchiveRefused(
                f"months with open (not restored) incidents cannot be archived: {listed}; restore them or"
                f" archive only earlier months (--before {still_open[0]['month']})"
            )
        await _refuse_unrelayed(conn, "", before=before)  # refuse as a whole before archiving any month
        done = []
        for row in months:
            start = parse_month_start(row["month"])
            done.append(await _archive_month(conn, folder, row["month"], start, _month_after(start)))
        return done
    finally:
        await conn.close()


async def _archive_month(
    conn: asyncpg.Connection, folder: Path, month: str, start: datetime, end: datetime
) -> Archived:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _ARCHIVE_LOCK)  # one archive run at a time
        # Locked until commit: the engine cannot change these incidents meanwhile (it would wait).
        chosen = await conn.fetch(
            "SELECT incident_id, state FROM incidents WHERE reported_at >= $1 AND reported_at < $2"
            " ORDER BY incident_id FOR UPDATE",
            start,
            end,
        )
        ids = [r["incident_id"] for r in chosen]
        path = folder / file_name(month)
        if not ids:  # another run archived it meanwhile
            return Archived(month, 0, 0, 0, path)
        if any(r["state"] != "restored" for r in chosen):
            raise ArchiveRefused(f"{month} has open incidents (restored since the check? run it again)")
        await _refuse_unrelayed(conn, month, set(ids))
        pending = await conn.fetchval("SELECT count(*) FROM timers WHERE incident_id = ANY($1::text[])", ids)
        if pending:
            raise ArchiveRefused(f"{month}: {pending} restored incident(s) still have a timer row")
        incidents = await _read_month(conn, ids)
        if path.exists():  # archived before (a late report for that month came in since): merge
            for old in read_month(path):
                incidents.setdefault(old.incident_id, old)
        write_month(folder, month, incidents.values())
        await conn.execute("SET LOCAL incidents.archiving = 'on'")  # the log's append-only guard allows it
        events = await conn.execute("DELETE FROM event_log WHERE incident_id = ANY($1::text[])", ids)
        firings = await conn.execute("DELETE FROM timer_firings WHERE incident_id = ANY($1::text[])", ids)
        await conn.execute("DELETE FROM incidents WHERE incident_id = ANY($1::text[])", ids)
    return Archived(month, len(ids), _count(events), _count(firings), path)


def _count(status: str) -> int:
    return int(status.rsplit(" ", 1)[-1])


async def _refuse_unrelayed(
    conn: asyncpg.Connection, month: str, ids: set[str] | None = None, before: datetime | None = None
) -> None:
    """Refuse while an output of these incidents (or of any incident reported before `before`) is
    still in the outbox, not yet sent to Kafka. The outbox holds little: it is read whole."""
    keys: set[str] = set()
    for row in await conn.fetch("SELECT id, kafka_partition, messages FROM outbox"):
        for out in decode_messages(row["messages"], row["kafka_partition"], row["id"]):
            if out.key is not None:
                keys.add(out.key.decode(errors="replace"))
    if before is not None:
        waiting = await conn.fetchrow(
            f"SELECT {_MONTH} AS month, incident_id FROM incidents"
            " WHERE reported_at < $1 AND incident_id = ANY($2::text[]) ORDER BY reported_at LIMIT 1",
            before,
            sorted(keys),
        )
        found = (waiting["month"], waiting["incident_id"]) if waiting is not None else None
    else:
        found = next(((month, key) for key in sorted(keys & (ids or set()))), None)
    if found is not None:
        raise ArchiveRefused(
            f"{found[0]}: outputs of incident {found[1]!r} wait in the outbox (not yet relayed to"
            " Kafka); run the engine until they are sent, then archive"
        )


async def _read_month(conn: asyncpg.Connection, ids: list[str]) -> dict[str, ArchivedIncident]:
    incidents = {incident_id: ArchivedIncident(incident_id) for incident_id in ids}
    rows = await conn.fetch(
        "SELECT incident_id, seq, event_id, type, source, event_time, processed_at, kafka_partition,"
        " kafka_offset, envelope::text AS envelope, trace_context FROM event_log"
        " WHERE incident_id = ANY($1::text[]) ORDER BY incident_id, seq",
        ids,
    )
    for row in rows:
        incidents[row["incident_id"]].rows.append(dict(row))
    firings = await conn.fetch(
        "SELECT incident_id, fired_at, kafka_partition, fire_until, breach_until FROM timer_firings"
        " WHERE incident_id = ANY($1::text[])",
        ids,
    )
    for incident_id, fired_at, partition, until, breach_until in firings:
        incidents[incident_id].firings.append((fired_at, partition, until, breach_until))
    return incidents


def archive_command(
    before: Annotated[str, typer.Option("--before", help="Archive the months before this one (YYYY-MM).")],
    to: Annotated[
        Path | None, typer.Option("--to", help="Archive folder (default INCIDENTS_ARCHIVE_DIR).")
    ] = None,
) -> None:
    """Move closed months of the event log (all incidents restored, outputs relayed) to compressed files."""
    settings = Settings()
    try:
        start = parse_month_start(before)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--before") from None
    folder = to or settings.incidents_archive_dir
    if folder is None:
        raise typer.BadParameter("give --to DIR or set INCIDENTS_ARCHIVE_DIR", param_hint="--to")
    dsn = settings.database_url.get_secret_value()
    try:
        horizon = settings.incidents_max_event_age + settings.incidents_max_clock_skew
        done = asyncio.run(archive_before(dsn, folder, start, datetime.now(UTC), horizon))
    except (ArchiveRefused, ArchiveError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    except asyncpg.UndefinedTableError as exc:
        console.print(f"[red]error:[/red] {exc}: no event log in this database; run `incidents db migrate`")
        raise typer.Exit(1) from None
    except (ConnectionError, socket.gaierror) as exc:  # the server, not the folder
        console.print(f"[red]error:[/red] {postgres_unreachable(dsn, exc)}")
        raise typer.Exit(UNREACHABLE) from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        where = without_credentials(dsn)
        console.print(f"[red]error:[/red] archive failed ({where}, folder {folder}): {exc}")
        raise typer.Exit(1) from None
    if not done:
        console.print(f"nothing to archive before {before}")
    for month in done:
        console.print(
            f"archived {month.month}: {month.incidents} incidents, {month.events} events,"
            f" {month.firings} timer firings -> {month.path}"
        )

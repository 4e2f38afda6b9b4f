"""The durable delivery schedule in PostgreSQL: one row per (output id, destination)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from incident_platform.postgres import migrate

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_TABLE = "notifier_schema_migrations"
MIGRATION_LOCK = 0x6E6F74696679  # "notify": the notifier's own advisory lock, beside the engine's


async def migrate_notifier(dsn: str) -> list[str]:
    """Apply the notifier's migrations (its own bookkeeping table and lock)."""
    return await migrate(dsn, MIGRATIONS, table=MIGRATION_TABLE, lock_key=MIGRATION_LOCK)


# Outputs that resolve PagerDuty pages; at one output time they are ordered after the others.
RESOLVING = ("incident.sla.retracted", "incident.state.changed")
_ORDER = (
    "({t}.event_time, {t}.event_type IN ('incident.sla.retracted', 'incident.state.changed'), {t}.output_id)"
)

Row = tuple[str, str, str, str, datetime, dict[str, Any], dict[str, str]]


class DeliveryStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def enqueue(self, rows: list[Row]) -> None:
        """Schedule deliveries now; a (output, destination) already known is left as it is, so a
        re-read output (a restart before the offset commit) is never scheduled twice."""
        await self.pool.executemany(
            "INSERT INTO notifier_deliveries"
            " (output_id, destination, incident_id, event_type, event_time, event, trace)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (output_id, destination) DO NOTHING",
            rows,
        )

    async def claim(
        self, destination: str, limit: int, lease_seconds: float, ordered: bool = False
    ) -> list[asyncpg.Record]:
        """Take up to `limit` due deliveries of `destination`: their `due_at` moves to the end of the
        lease (taken again then if this process dies mid-attempt), their attempt count goes up.

        `ordered` (PagerDuty, where a trigger and a resolve of one dedup key must land in order): a
        row is not taken while an earlier row of the same incident is pending (retrying, or leased to
        an attempt in flight). Earlier = the output's `time` (the engine's processing time), then
        a resolving output (retraction, state change) after the others, then the output id."""
        return await self.pool.fetch(
            "WITH due AS (SELECT output_id, destination FROM notifier_deliveries d"
            "  WHERE destination = $1 AND status = 'pending' AND due_at <= clock_timestamp()"
            f"  AND (NOT $4::boolean OR NOT EXISTS (SELECT 1 FROM notifier_deliveries e"
            "    WHERE e.destination = d.destination AND e.incident_id = d.incident_id"
            f"    AND e.status = 'pending' AND {_ORDER.format(t='e')} < {_ORDER.format(t='d')}))"
            "  ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " UPDATE notifier_deliveries d"
            " SET due_at = clock_timestamp() + make_interval(secs => $3), attempts = d.attempts + 1"
            " FROM due WHERE d.output_id = due.output_id AND d.destination = due.destination"
            " RETURNING d.output_id, d.destination, d.incident_id, d.event_type, d.event, d.trace,"
            "  d.attempts, d.event_time, d.resends",
            destination,
            limit,
            lease_seconds,
            ordered,
        )

    async def later_resolving(self, row: asyncpg.Record) -> list[dict[str, Any]]:
        """The outputs of `row`'s incident and destination that come after it (in claim order), are
        resolving ones (retraction, state change) and were delivered."""
        found = await self.pool.fetch(
            "SELECT d.event FROM notifier_deliveries d"
            " WHERE d.destination = $1 AND d.incident_id = $2 AND d.status = 'delivered'"
            f" AND d.event_type = ANY($5::text[]) AND {_ORDER.format(t='d')} > ($3, $6, $4)",
            row["destination"],
            row["incident_id"],
            row["event_time"],
            row["output_id"],
            list(RESOLVING),
            row["event_type"] in RESOLVING,
        )
        return [r["event"] for r in found]

    async def delivered(self, output_id: str, destination: str, attempts: int) -> bool:
        """Mark delivered, fenced by the attempt: False when the lease was lost (a later attempt
        took the row, or settled it)."""
        return await self._settle(
            "SET status = 'delivered', finished_at = clock_timestamp(), last_error = NULL",
            output_id,
            destination,
            attempts,
        )

    async def superseded(self, output_id: str, destination: str, attempts: int, reason: str) -> bool:
        """Not sent, never will be: a later output already did what it would undo (fenced)."""
        return await self._settle(
            "SET status = 'superseded', finished_at = clock_timestamp(), last_error = $4",
            output_id,
            destination,
            attempts,
            reason,
        )

    async def hold(self, output_id: str, destination: str, attempts: int, lease_seconds: float) -> bool:
        """Renew the lease of an attempt that is still ours (before a slow step: the dead letter)."""
        return await self._settle(
            "SET due_at = clock_timestamp() + make_interval(secs => $4)",
            output_id,
            destination,
            attempts,
            lease_seconds,
        )

    async def reschedule(
        self, output_id: str, destination: str, attempts: int, delay: float, error: str
    ) -> bool:
        """Retry after `delay` seconds (only if no later attempt took the row meanwhile)."""
        return await self._settle(
            "SET due_at = clock_timestamp() + make_interval(secs => $4), last_error = $5",
            output_id,
            destination,
            attempts,
            delay,
            error,
        )

    async def dead(self, output_id: str, destination: str, attempts: int, error: str) -> bool:
        """Mark dead, fenced by the attempt like `delivered`."""
        return await self._settle(
            "SET status = 'dead', finished_at = clock_timestamp(), last_error = $4",
            output_id,
            destination,
            attempts,
            error,
        )

    async def _settle(
        self, assignments: str, output_id: str, destination: str, attempts: int, *args: Any
    ) -> bool:
        # The fence: the row is still pending and no later claim raised its attempt count.
        result = await self.pool.execute(
            f"UPDATE notifier_deliveries {assignments}"
            " WHERE output_id = $1 AND destination = $2 AND attempts = $3 AND status = 'pending'",
            output_id,
            destination,
            attempts,
            *args,
        )
        return result.endswith(" 1")

    async def resend(self, destination: str | None) -> int:
        """Dead deliveries (of one destination, or all) pending again, from their first attempt;
        each one's `resends` goes up, so its next dead letter has a new id."""
        result = await self.pool.execute(
            "UPDATE notifier_deliveries"
            " SET status = 'pending', attempts = 0, due_at = clock_timestamp(), finished_at = NULL,"
            "  resends = resends + 1"
            " WHERE status = 'dead' AND ($1::text IS NULL OR destination = $1)",
            destination,
        )
        return int(result.split()[-1])

    async def pending_elsewhere(self, configured: list[str]) -> dict[str, int]:
        """Pending deliveries of destinations not in `configured` (a renamed or removed one)."""
        rows = await self.pool.fetch(
            "SELECT destination, count(*) AS n FROM notifier_deliveries"
            " WHERE status = 'pending' AND destination <> ALL($1::text[]) GROUP BY destination",
            configured,
        )
        return {r["destination"]: int(r["n"]) for r in rows}

    async def counts(self) -> dict[str, int]:
        """Deliveries by status."""
        rows = await self.pool.fetch("SELECT status, count(*) AS n FROM notifier_deliveries GROUP BY status")
        return {r["status"]: int(r["n"]) for r in rows}

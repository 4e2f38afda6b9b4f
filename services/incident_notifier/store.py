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

    async def claim(self, destination: str, limit: int, lease_seconds: float) -> list[asyncpg.Record]:
        """Take up to `limit` due deliveries of `destination`: their `due_at` moves to the end of the
        lease (taken again then if this process dies mid-attempt), their attempt count goes up."""
        return await self.pool.fetch(
            "WITH due AS (SELECT output_id, destination FROM notifier_deliveries"
            "  WHERE destination = $1 AND status = 'pending' AND due_at <= clock_timestamp()"
            "  ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
            " UPDATE notifier_deliveries d"
            " SET due_at = clock_timestamp() + make_interval(secs => $3), attempts = d.attempts + 1"
            " FROM due WHERE d.output_id = due.output_id AND d.destination = due.destination"
            " RETURNING d.output_id, d.destination, d.event, d.trace, d.attempts, d.event_time",
            destination,
            limit,
            lease_seconds,
        )

    async def delivered(self, output_id: str, destination: str) -> None:
        await self.pool.execute(
            "UPDATE notifier_deliveries"
            " SET status = 'delivered', finished_at = clock_timestamp(), last_error = NULL"
            " WHERE output_id = $1 AND destination = $2 AND status = 'pending'",
            output_id,
            destination,
        )

    async def reschedule(
        self, output_id: str, destination: str, attempts: int, delay: float, error: str
    ) -> None:
        """Retry after `delay` seconds (only if no later attempt took the row meanwhile)."""
        await self.pool.execute(
            "UPDATE notifier_deliveries"
            " SET due_at = clock_timestamp() + make_interval(secs => $4), last_error = $5"
            " WHERE output_id = $1 AND destination = $2 AND attempts = $3 AND status = 'pending'",
            output_id,
            destination,
            attempts,
            delay,
            error,
        )

    async def dead(self, output_id: str, destination: str, error: str) -> None:
        await self.pool.execute(
            "UPDATE notifier_deliveries SET status = 'dead', finished_at = clock_timestamp(), last_error = $3"
            " WHERE output_id = $1 AND destination = $2 AND status = 'pending'",
            output_id,
            destination,
            error,
        )

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

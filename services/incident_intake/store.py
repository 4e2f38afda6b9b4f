"""Where the alert-key → incident map lives: PostgreSQL (`intake_alert_keys`), and its in-memory twin."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Protocol

import asyncpg

from incident_intake.tracking import Tracked
from incident_platform.postgres import migrate

__all__ = ["MIGRATIONS", "AlertKeys", "MemoryStore", "PostgresStore", "Store", "migrate_intake"]

MIGRATIONS = Path(__file__).with_name("migrations")
MIGRATIONS_TABLE = "intake_schema_migrations"
MIGRATIONS_LOCK = 0x1A7A_4B01  # the intake's own advisory lock (the engine has its own)


async def migrate_intake(dsn: str) -> list[str]:
    """Apply the intake's pending migrations (safe from several replicas at once)."""
    return await migrate(dsn, MIGRATIONS, table=MIGRATIONS_TABLE, lock_key=MIGRATIONS_LOCK)


class AlertKeys:
    """The locked alert keys of one notification: read them, then `save` what changed."""

    def __init__(self, tracked: dict[str, Tracked]) -> None:
        self.tracked = tracked
        self.changed: dict[str, Tracked] = {}

    def save(self, key: str, tracked: Tracked) -> None:
        """Remember `tracked` for `key`, written when the unit of work commits."""
        if tracked != self.tracked[key]:
            self.changed[key] = tracked
        else:
            self.changed.pop(key, None)


class Store(Protocol):
    """The port: lock the keys of a notification, hand what is known, write back on success."""

    def locked(self, integration: str, keys: Sequence[str]) -> AbstractAsyncContextManager[AlertKeys]:
        """Hold `keys` of `integration` exclusively; write the saved changes only if the block succeeds."""
        ...

    async def ping(self) -> None:
        """Raise when the store cannot answer."""
        ...


_LOCK_SQL = """
SELECT alert_key, incident_id, open, acknowledged, digest, updates, generation, opened_at
FROM intake_alert_keys WHERE integration = $1 AND alert_key = ANY($2::text[])
ORDER BY alert_key FOR UPDATE
"""
_SAVE_SQL = """
UPDATE intake_alert_keys SET incident_id = $3, open = $4, acknowledged = $5, digest = $6, updates = $7,
    generation = $8, opened_at = $9, updated_at = now()
WHERE integration = $1 AND alert_key = $2
"""


class PostgresStore:
    """`Store` on PostgreSQL: rows created race-free (INSERT … ON CONFLICT), then locked FOR UPDATE."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @asynccontextmanager
    async def locked(self, integration: str, keys: Sequence[str]) -> AsyncIterator[AlertKeys]:
        """See `Store.locked`."""
        ordered = sorted(set(keys))  # one lock order for every replica: no deadlock between them
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO intake_alert_keys (integration, alert_key) SELECT $1, unnest($2::text[]) "
                "ON CONFLICT DO NOTHING",
                integration,
                ordered,
            )
            rows = await conn.fetch(_LOCK_SQL, integration, ordered)
            unit = AlertKeys({r["alert_key"]: Tracked(*list(r.values())[1:]) for r in rows})
            yield unit
            if unit.changed:
                await conn.executemany(
                    _SAVE_SQL,
                    [
                        (integration, key, t.incident_id, t.open, t.acknowledged, t.digest, t.updates,
                         t.generation, t.opened_at)
                        for key, t in unit.changed.items()
                    ],
                )  # fmt: skip

    async def ping(self) -> None:
        """See `Store.ping`."""
        await self.pool.fetchval("SELECT 1")


class MemoryStore:
    """`Store` in memory, for unit tests: same semantics, one lock for everything."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], Tracked] = {}
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def locked(self, integration: str, keys: Sequence[str]) -> AsyncIterator[AlertKeys]:
        """See `Store.locked`."""
        async with self._lock:
            unit = AlertKeys({k: self.rows.get((integration, k), Tracked()) for k in sorted(set(keys))})
            yield unit
            for key, tracked in unit.changed.items():
                self.rows[(integration, key)] = tracked

    async def ping(self) -> None:
        """See `Store.ping`."""

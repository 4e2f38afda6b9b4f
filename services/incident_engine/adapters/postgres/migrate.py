"""The engine's numbered SQL migrations, applied once each, under an advisory lock so replicas don't race."""

from __future__ import annotations

from pathlib import Path

from incident_platform import postgres

MIGRATIONS = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x51A_E461  # any constant shared by every engine replica
TABLE = "schema_migrations"


def migration_files() -> list[Path]:
    """The migrations in the order they apply (by their number prefix)."""
    return postgres.migration_files(MIGRATIONS)


async def migrate(dsn: str) -> list[str]:
    """Apply the migrations not applied yet; return the names applied now."""
    return await postgres.migrate(dsn, MIGRATIONS, table=TABLE, lock_key=_LOCK_KEY)

"""The PostgreSQL pool (orjson codecs, timeouts that let no call hang) and numbered SQL migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg
import orjson

__all__ = ["create_pool", "migrate", "migration_files", "pool_timeouts"]


def _jsonb_encode(value: Any) -> bytes:
    return b"\x01" + orjson.dumps(value)  # jsonb's binary format: a version byte, then the text


def _jsonb_decode(data: bytes) -> Any:
    return orjson.loads(data[1:])


async def _init_connection(conn: asyncpg.Connection) -> None:
    # json/jsonb through orjson (several times faster than the json module on the hot path), in the
    # binary wire format so that COPY (binary only) can write them too. Already serialized JSON goes
    # in as `orjson.Fragment(raw)`, copied as is.
    await conn.set_type_codec(
        "json", encoder=orjson.dumps, decoder=orjson.loads, schema="pg_catalog", format="binary"
    )
    await conn.set_type_codec(
        "jsonb", encoder=_jsonb_encode, decoder=_jsonb_decode, schema="pg_catalog", format="binary"
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    # The stores keep no session state (no LISTEN, advisory locks or SETs), so the default reset on
    # release (four statements per acquire) is pure overhead on the per-batch path.
    return None


async def create_pool(
    dsn: str,
    min_size: int = 1,
    max_size: int = 8,
    *,
    connect_timeout: float = 60.0,
    command_timeout: float | None = None,
    server_settings: dict[str, str] | None = None,
) -> asyncpg.Pool:
    """A connection pool with json/jsonb through orjson (timeouts: see `pool_timeouts`)."""
    pool = await asyncpg.create_pool(
        dsn, min_size=min_size, max_size=max_size, init=_init_connection, reset=_keep_session,
        timeout=connect_timeout, command_timeout=command_timeout, server_settings=server_settings,
    )  # fmt: skip
    assert pool is not None
    return pool


def pool_timeouts(
    connect_ms: int, command_ms: int, statement_ms: int, idle_in_transaction_ms: int
) -> dict[str, Any]:
    """`create_pool` keywords so that no call can hang: the client gives up on a call after
    `command_ms`, the server cancels a statement after `statement_ms` and ends a transaction left
    idle for `idle_in_transaction_ms` (its client gone), each session's own settings. 0 = no limit."""
    return {
        "connect_timeout": connect_ms / 1000,
        "command_timeout": command_ms / 1000 if command_ms > 0 else None,
        "server_settings": {
            "statement_timeout": str(max(statement_ms, 0)),
            "idle_in_transaction_session_timeout": str(max(idle_in_transaction_ms, 0)),
        },
    }


def migration_files(directory: Path) -> list[Path]:
    """The migrations of `directory` in the order they apply (by their `NNNN_` number prefix)."""
    return sorted(directory.glob("[0-9][0-9][0-9][0-9]_*.sql"))


async def migrate(dsn: str, directory: Path, *, table: str, lock_key: int) -> list[str]:
    """Apply the migrations of `directory` not applied yet; return the names applied now.

    Each service keeps its own bookkeeping `table` (so the engine's `0001` and the intake's `0001`
    never collide) and its own advisory `lock_key`, under which its replicas never race. Each file
    applies in one transaction with its bookkeeping row."""
    if not table.isidentifier():
        raise ValueError(f"migration table {table!r} is not a plain identifier")
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
        try:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {table} ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {table}")}
            applied = []
            for path in migration_files(directory):
                if path.stem in done:
                    continue
                async with conn.transaction():
                    await conn.execute(path.read_text())
                    await conn.execute(f"INSERT INTO {table} (version) VALUES ($1)", path.stem)
                applied.append(path.stem)
            return applied
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)
    finally:
        await conn.close()

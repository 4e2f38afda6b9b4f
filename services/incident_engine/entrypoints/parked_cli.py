"""`incidents outbox parked|resend`: outputs the broker refused for good, for an operator to handle.

The relay parks an output Kafka refuses (e.g. larger than the topic's `max.message.bytes`) in
`outbox_parked` with the broker's error and goes on. Once the cause is fixed (the topic's limit
raised, say), `resend` publishes them with their original key, id and headers, and forgets each
one Kafka acknowledged; downstream deduplicates on the output id as for any re-send.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from aiokafka import AIOKafkaProducer
from rich.console import Console

from incident_engine.adapters.postgres.store import PostgresStore, create_pool
from incident_engine.adapters.store import OutboxRow
from incident_engine.config import Settings
from incident_engine.entrypoints.relay import kafka_headers
from incident_platform.cli_errors import run_or_exit
from incident_platform.kafka import kafka_security

console = Console(highlight=False, soft_wrap=True)
outbox_app = typer.Typer(no_args_is_help=True, help="Outputs Kafka refused, parked by the relay.")


async def list_parked(dsn: str) -> list[tuple[OutboxRow, str]]:
    """Every parked output with the broker's error."""
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        return await PostgresStore(pool).parked_outputs()
    finally:
        await pool.close()


async def resend_parked(settings: Settings, ids: list[int] | None = None) -> dict[int, str | None]:
    """Publish parked outputs (all, or those of `ids`); forget each one Kafka acknowledged.

    Returns parked id -> None when sent, else the error (the output stays parked).
    """
    pool = await create_pool(settings.database_url.get_secret_value(), min_size=1, max_size=1)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        enable_idempotence=False,  # one refusal must not stop the others (see relay.py)
        acks="all",
        max_request_size=64 * 1024 * 1024,  # the broker is the judge of what fits
        **kafka_security(settings),
    )
    store = PostgresStore(pool)
    outcome: dict[int, str | None] = {}
    try:
        await producer.start()
        for row, _ in await store.parked_outputs():
            if ids and row.id not in ids:
                continue
            try:
                await producer.send_and_wait(row.topic, row.payload, key=row.key, headers=kafka_headers(row))
            except Exception as exc:
                outcome[row.id] = f"{type(exc).__name__}: {exc}"
                continue
            await store.unpark([row.id])
            outcome[row.id] = None
    finally:
        await producer.stop()
        await pool.close()
    return outcome


T = TypeVar("T")


def _run(work: Coroutine[Any, Any, T], settings: Settings) -> T:
    """Run a command's work; what cannot be reached is one line that says where, and exit 2."""
    dsn = settings.database_url.get_secret_value()
    return run_or_exit(work, dsn=dsn, bootstrap=settings.kafka_bootstrap_servers)


@outbox_app.command("parked")
def parked_command() -> None:
    """List the parked outputs: id, topic, key, output id, size and the broker's error."""
    settings = Settings()
    rows = _run(list_parked(settings.database_url.get_secret_value()), settings)
    for row, error in rows:
        key = row.key.decode(errors="replace") if row.key is not None else "-"
        console.print(f"{row.id}\t{row.topic}\t{key}\t{row.event_id}\t{len(row.payload)} bytes\t{error}")
    if not rows:
        console.print("no parked outputs")


@outbox_app.command("resend")
def resend_command(
    ids: Annotated[list[int] | None, typer.Argument(help="Parked ids to re-send (default: all).")] = None,
) -> None:
    """Re-send parked outputs (after fixing what made Kafka refuse them)."""
    settings = Settings()
    outcome = _run(resend_parked(settings, ids), settings)
    for parked_id, error in outcome.items():
        console.print(f"{parked_id}\t{'sent' if error is None else 'still parked: ' + error}")
    if any(error is not None for error in outcome.values()):
        raise typer.Exit(1)

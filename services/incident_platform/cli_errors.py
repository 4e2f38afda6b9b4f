"""One wording for "cannot reach PostgreSQL/Kafka" in every command: what failed, where, what to do.

Commands print these instead of a traceback and exit 2 (`UNREACHABLE`); the engine's start-up logs
them too. A DSN is printed without its credentials.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import typer
from aiokafka.errors import KafkaConnectionError, KafkaError
from rich.console import Console

from incident_platform.settings import without_credentials

__all__ = [
    "UNREACHABLE",
    "exit_on_unreachable",
    "kafka_unreachable",
    "postgres_address",
    "postgres_unreachable",
    "reason_of",
    "run_or_exit",
]

UNREACHABLE = 2  # exit code of a command that could not reach PostgreSQL or Kafka
_stderr = Console(stderr=True, highlight=False, soft_wrap=True)
T = TypeVar("T")


def postgres_address(dsn: str) -> str:
    """host:port of a DSN (port 5432 when it names none), for people to read."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        return f"{host}:{parts.port or 5432}"
    except ValueError:
        return without_credentials(dsn)


def reason_of(exc: BaseException) -> str:
    """A short, human cause of a connection failure (no Python class names when a word says it)."""
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in str(exc):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"unknown host ({exc.strerror})"
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timed out"
    if isinstance(exc, KafkaConnectionError):
        return "no broker answered"
    if isinstance(exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return f"authentication failed ({exc})"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{exc} (create it, or fix the database name in DATABASE_URL)"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_ANSWERED = (  # PostgreSQL answered, and said no: asking whether it runs would mislead
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)


def postgres_unreachable(dsn: str, exc: BaseException | str) -> str:
    """The one line that says PostgreSQL could not be used, where, and what to do."""
    if isinstance(exc, asyncpg.ClientConfigurationError):  # never sent anywhere
        return (
            f"DATABASE_URL is not a PostgreSQL URL ({without_credentials(dsn)}): {exc}. Expected"
            " postgresql://USER:PASSWORD@HOST:5432/DATABASE."
        )
    reason = exc if isinstance(exc, str) else reason_of(exc)
    where = f"PostgreSQL at {postgres_address(dsn)} ({without_credentials(dsn)}, from DATABASE_URL)"
    if isinstance(exc, _ANSWERED):
        return f"{where} refused the connection: {reason}. Check DATABASE_URL."
    return (
        f"cannot reach {where}: {reason}. Is it running? Check DATABASE_URL, or start a local one with"
        " `incidents dev up`."
    )


def kafka_unreachable(bootstrap: str, exc: BaseException | str) -> str:
    """The one line that says Kafka could not be reached, where, and what to do."""
    reason = exc if isinstance(exc, str) else reason_of(exc)
    return (
        f"cannot reach Kafka at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS): {reason}. Is it running?"
        " Check KAFKA_BOOTSTRAP_SERVERS, or start a local one with `incidents dev up`."
    )


@contextmanager
def exit_on_unreachable(dsn: str | None = None, bootstrap: str | None = None) -> Iterator[None]:
    """Turn PostgreSQL/Kafka failures inside the block into one error line on stderr and exit 2."""
    if bootstrap is not None:  # the Kafka client's own ERROR lines would say it again, less clearly
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        yield
    except asyncpg.UndefinedTableError as exc:
        _stderr.print(f"[red]error:[/red] {exc}: the database has no tables yet; run `incidents db migrate`")
    except KafkaError as exc:
        if bootstrap is None:
            raise
        _stderr.print(f"[red]error:[/red] {kafka_unreachable(bootstrap, exc)}")
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        if isinstance(exc, OSError) and exc.filename is not None:  # a file, not the server
            _stderr.print(f"[red]error:[/red] {exc.filename}: {exc.strerror or exc}")
        elif dsn is None:
            raise
        else:
            _stderr.print(f"[red]error:[/red] {postgres_unreachable(dsn, exc)}")
    else:
        return
    raise typer.Exit(UNREACHABLE)


def run_or_exit(work: Coroutine[Any, Any, T], dsn: str | None = None, bootstrap: str | None = None) -> T:
    """`asyncio.run(work)`, with `exit_on_unreachable` around it."""
    with exit_on_unreachable(dsn, bootstrap):
        return asyncio.run(work)
    raise AssertionError("unreachable")  # (for type checkers: the context manager raises or returns)

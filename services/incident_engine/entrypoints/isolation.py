"""Poison isolation: which failures are the infrastructure's, and finding the input a batch fails on.

A batch fails either because something it needs is unreachable (Postgres, Kafka, the network: retry
the same batch later, it will pass) or because of what it holds (a value Postgres refuses, an input
the domain cannot reason about: retrying it fails forever). The second kind is isolated: the batch
is redone in halves, each committed on its own, down to the single input that still fails, which
is dead-lettered (or, for a due timer, dropped) so the partition goes on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg
from aiokafka.errors import KafkaError
from asyncpg.exceptions._base import DataError as ArgumentError

from incident_engine.adapters.store import OffsetConflict

Item = TypeVar("Item")
_DETAIL_LIMIT = 1000  # characters of an exception quoted in a dead letter

# Postgres refusing the data itself: a value it cannot store (class 22: a NUL in text, a number or
# time out of range), a constraint (23) or a size limit (54). Any other Postgres error (connection,
# shutdown, cancelled statement, serialization, a bug in our SQL) says nothing about the message.
_DATA_ERRORS: tuple[type[BaseException], ...] = (
    ArgumentError,  # asyncpg refusing to encode a value client-side (an InterfaceError subclass)
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
)
_INFRASTRUCTURE: tuple[type[BaseException], ...] = (
    OffsetConflict,  # fenced off: another replica owns the partition now
    OSError,  # ConnectionError and friends: sockets, DNS, TLS
    TimeoutError,  # asyncio.TimeoutError too (asyncpg command_timeout, wait_for)
    asyncpg.InterfaceError,  # connection closed or in a bad state, pool closing
    KafkaError,
    MemoryError,
)


def is_infrastructure(exc: BaseException) -> bool:
    """True when `exc` says Postgres or Kafka cannot be used now (retry), not that the input is bad."""
    if isinstance(exc, ArgumentError):
        return False
    if isinstance(exc, _INFRASTRUCTURE):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        return not isinstance(exc, _DATA_ERRORS)
    return False  # raised by the domain or the store's encoding of a value: the input is at fault


def describe(exc: BaseException) -> str:
    """The exception's type and message, bounded, for a dead letter's `detail` and the logs."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 1] + "…"


async def bisect(
    items: Sequence[Item],
    attempt: Callable[[Sequence[Item]], Awaitable[object]],
    quarantine: Callable[[Item, BaseException], Awaitable[object]],
) -> int:
    """Run `attempt` on all items, else on each half in order, down to single items; a single item
    that still fails (not for the infrastructure) goes to `quarantine`. Returns how many did.

    `attempt` must be all-or-nothing (decide and commit in one transaction), so that a failed half
    leaves nothing behind and a succeeded half is never redone. Infrastructure failures propagate.
    """
    if not items:
        return 0
    try:
        await attempt(items)
        return 0
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if is_infrastructure(exc):
            raise
        if len(items) == 1:
            await quarantine(items[0], exc)
            return 1
    middle = len(items) // 2
    return await bisect(items[:middle], attempt, quarantine) + await bisect(
        items[middle:], attempt, quarantine
    )

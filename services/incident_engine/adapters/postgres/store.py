"""The event store on PostgreSQL (asyncpg): one transaction per batch, bulk writes through unnest."""

from __future__ import annotations

import re
from collections.abc import Awaitable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from incident_engine.adapters.outbox_codec import decode_messages, encode_messages
from incident_engine.adapters.store import (
    BatchWrite,
    EventKey,
    OffsetConflict,
    OutboxRow,
    RepeatConflict,
    TimerRow,
)
from incident_engine.domain import Incident
from incident_engine.gc_pause import gc_paused
from incident_platform.postgres import create_pool, pool_timeouts

__all__ = ["PostgresStore", "create_pool", "pool_timeouts"]

_REFUSED = "EB409"  # write_batch refusing itself (migration 0012): the batch conflicts, nothing written
_EVENT_KEY = "event_log_event_id_source_key"  # an input event (source, id) is logged once
_KEY_DETAIL = re.compile(r"\(event_id, source\)=\((.*), (.*)\) already exists")

SQL = {
    name.stem: name.read_text()
    for name in (Path(__file__).parent / "queries").glob("*.sql")
}  # fmt: skip


def _conflict(batch: BatchWrite, fence: dict[int, int], exc: asyncpg.PostgresError) -> OffsetConflict:
    """The OffsetConflict for a refused batch, saying which check failed (the counts are in DETAIL)."""
    try:
        counts = orjson.loads(getattr(exc, "detail", None) or "{}")
    except orjson.JSONDecodeError:
        counts = {}
    if counts.get("fenced") != counts.get("fence"):
        return OffsetConflict(
            f"partitions {sorted(fence)} of {batch.input_topic}: epochs {list(fence.values())}"
            " no longer all current (another replica claimed one since); batch refused"
        )
    if counts.get("offsets") != counts.get("offsets_expected"):
        return OffsetConflict(
            f"partitions {sorted(p for (_, p) in batch.offsets)} moved past the offsets this batch"
            " started from, under this consumer"
        )
    return OffsetConflict(
        f"incident projection out of step ({counts.get('changed')} of {counts.get('changed_expected')}"
        " rows still at the seq this batch was decided from); batch refused"
    )


def _key_of(exc: asyncpg.UniqueViolationError) -> EventKey | None:
    """The (source, id) a violation of the event key names, when its DETAIL can be read."""
    found = _KEY_DETAIL.search(getattr(exc, "detail", None) or "")
    return (found.group(2), found.group(1)) if found else None


class PostgresStore:
    """EventStore on PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def committed_offsets(self, group_id: str, topic: str, partitions: list[int]) -> dict[int, int]:
        """Next offset to consume per partition, for those that have one."""
        rows = await self.pool.fetch(SQL["committed_offsets"], group_id, topic, partitions)
        return {r["kafka_partition"]: r["next_offset"] for r in rows}

    async def claim(self, group_id: str, topic: str, partitions: list[int]) -> dict[int, int]:
        """Take ownership of partitions: bump and return their epochs (older ones are fenced off)."""
        if not partitions:
            return {}
        rows = await self.pool.fetch(SQL["claim_partitions"], group_id, topic, sorted(set(partitions)))
        return {r["kafka_partition"]: r["epoch"] for r in rows}

    async def epochs(self, group_id: str, topic: str, partitions: list[int]) -> dict[int, int]:
        """The current ownership epoch of these partitions (those ever claimed)."""
        rows = await self.pool.fetch(
            "SELECT kafka_partition, epoch FROM partition_owners"
            " WHERE group_id = $1 AND topic = $2 AND kafka_partition = ANY($3::int[])",
            group_id, topic, partitions,
        )  # fmt: skip
        return {r["kafka_partition"]: r["epoch"] for r in rows}

    async def known_event_ids(self, event_keys: list[EventKey]) -> set[EventKey]:
        """Which of these input events, by (source, id), are already in the event log."""
        known, _ = await self.lookup(event_keys, [])
        return known

    async def load_incidents(self, incident_ids: list[str]) -> dict[str, Incident]:
        """Current state of these incidents (absent ones are unknown)."""
        if not incident_ids:
            return {}
        rows = await self.pool.fetch(
            "SELECT incident_id, body FROM incidents WHERE incident_id = ANY($1::text[])", incident_ids
        )
        return {r["incident_id"]: Incident.from_json(r["body"]) for r in rows}

    async def lookup(
        self, event_keys: list[EventKey], incident_ids: list[str]
    ) -> tuple[set[EventKey], dict[str, Incident]]:
        """`known_event_ids` and `load_incidents` in one round trip (the start of every batch)."""
        if not event_keys and not incident_ids:
            return set(), {}
        sources = [source for source, _ in event_keys]
        rows = await self.pool.fetch(SQL["lookup"], sources, [i for _, i in event_keys], incident_ids)
        known = {(r["source"], r["id"]) for r in rows if r["body"] is None}
        return known, {r["id"]: Incident.from_json(r["body"]) for r in rows if r["body"] is not None}

    async def load_timers(self, partitions: list[int]) -> list[TimerRow]:
        """Every pending timer row of these partitions."""
        # A million rows are a million acyclic objects: without the cyclic GC running over and over
        # while they are created, loading takes about half the time (nothing here can form a cycle).
        with gc_paused():
            rows = await self.pool.fetch(
                "SELECT incident_id, kafka_partition, due_at, trace_context FROM timers"
                " WHERE kafka_partition = ANY($1::int[])",
                partitions,
            )
            return [TimerRow(*r) for r in rows]

    async def commit(self, batch: BatchWrite, after: Awaitable[object] | None = None) -> None:
        """Write the batch atomically; raise OffsetConflict when the offsets moved under us.

        One statement, so one round trip, outside any explicit transaction (its own): the fence
        (the ownership epochs and the offsets), changed incidents (conditional on the seq they were
        decided from), timers, firings, the outbox and the outbox rows already sent, the new events
        and the new incidents. When a check fails the statement raises EB409 and writes nothing.
        """
        dumps = orjson.dumps
        offsets = list(batch.offsets.items())
        grouped: dict[int, list[OutboxRow]] = {}
        for out in batch.outbox:
            grouped.setdefault(out.partition, []).append(out)
        queued = list(grouped)
        new: list[tuple[Incident, int]] = []
        changed: list[tuple[Incident, int]] = []
        for incident_id, (inc, partition) in batch.incidents.items():
            (new if incident_id in batch.created else changed).append((inc, partition))
        gone = [incident_id for incident_id, row in batch.timers.items() if row is None]
        armed = [row for row in batch.timers.values() if row is not None]
        firings = list(batch.firings.items())
        events = batch.events
        decided_from = batch.decided_from
        # Every incident's state is read here, before the first await: the next batch is decided
        # while this one commits and changes the same (cached) incidents in place. Read later, a
        # batch would write the states of the next one, whose events, if that one failed, would
        # then be redone against a projection already past them.
        # A row per element of an array of a composite type (migration 0013): asyncpg checks each
        # element of an array before encoding it, so one element per row, not one per column.
        changed_rows = [
            (inc.id, inc.state, inc.seq, p, inc.last_event_at, inc.to_json_bytes().decode(),
             decided_from.get(inc.id))
            for inc, p in changed
        ]  # fmt: skip
        new_rows = [
            (inc.id, inc.state, inc.policy, inc.severity, inc.region, inc.seq, p, inc.reported_at,
             inc.last_event_at, inc.to_json_bytes().decode())
            for inc, p in new
        ]  # fmt: skip
        # The events of a batch share their processing moment (the batch's `now`): sent once, not
        # per row (a timestamptz costs asyncpg about as much to encode as the rest of a short row).
        processed_at = events[0].processed_at if events else None
        event_rows = [
            (x.incident_id, x.seq, x.event_id, x.type, x.source, x.event_time,
             None if x.processed_at is processed_at else x.processed_at,
             x.partition, x.offset, x.envelope.decode(),
             dumps(x.trace_context).decode() if x.trace_context else None)
            for x in events
        ]  # fmt: skip
        armed_rows = [
            (t.incident_id, t.partition, t.due_at,
             dumps(t.trace_context).decode() if t.trace_context else None)
            for t in armed
        ]  # fmt: skip
        fence = batch.fence()
        if after is not None:
            await after  # the batch decided before this one; its failure is this one's
        try:
            done = await self.pool.fetchrow(
                SQL["write_batch"],
                [t for (t, _), _ in offsets], [p for (_, p), _ in offsets],
                [n for _, (_, n) in offsets], [e for _, (e, _) in offsets],
                changed_rows, gone, armed_rows,
                [i for (i, _), _ in firings], [at for (_, at), _ in firings],
                [p for _, (p, _, _) in firings],
                queued, [len(grouped[p]) for p in queued], [encode_messages(grouped[p]) for p in queued],
                batch.group_id, batch.sent_outbox,
                batch.input_topic, list(fence), list(fence.values()),
                [u for _, (_, u, _) in firings], [b for _, (_, _, b) in firings],
                event_rows, new_rows, processed_at,
            )  # fmt: skip
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == _EVENT_KEY:
                raise RepeatConflict(_key_of(exc)) from None
            raise
        except asyncpg.PostgresError as exc:
            if getattr(exc, "sqlstate", None) == _REFUSED:
                raise _conflict(batch, fence, exc) from None
            raise
        assert done is not None  # the statement always returns its one row
        for row_id, partition in zip(done["outbox_ids"], done["outbox_partitions"], strict=True):
            for out in grouped[partition]:
                out.id = row_id

    async def pending_outbox(self, partitions: list[int], limit: int) -> list[OutboxRow]:
        """The oldest unsent outputs of these partitions, in commit order (`limit` counts rows of batches)."""
        rows = await self.pool.fetch(SQL["pending_outbox"], partitions, limit)
        return [out for r in rows for out in decode_messages(r["messages"], r["kafka_partition"], r["id"])]

    async def mark_sent(self, ids: list[int]) -> None:
        """Forget outbox rows that Kafka acknowledged."""
        if ids:
            await self.pool.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", sorted(set(ids)))

    async def outbox_backlog(self) -> int:
        """How many outputs wait for the relay."""
        return int(await self.pool.fetchval("SELECT coalesce(sum(message_count), 0) FROM outbox"))

    async def park(self, row: OutboxRow, error: str) -> None:
        """Keep an output the broker refused for good (with its error) out of the relay's way."""
        await self.pool.execute(
            "INSERT INTO outbox_parked (kafka_partition, topic, key, event_id, headers, payload, error)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            row.partition, row.topic, row.key, row.event_id, row.headers or None, row.payload, error,
        )  # fmt: skip

    async def parked_outputs(self) -> list[tuple[OutboxRow, str]]:
        """Every parked output with the broker's error, oldest first (`id` is the parked row's)."""
        rows = await self.pool.fetch(
            "SELECT id, kafka_partition, topic, key, event_id, headers, payload, error"
            " FROM outbox_parked ORDER BY id"
        )
        return [
            (OutboxRow(r["kafka_partition"], r["topic"], r["key"], r["event_id"], r["payload"],
                       r["headers"], r["id"]), r["error"])
            for r in rows
        ]  # fmt: skip

    async def unpark(self, ids: list[int]) -> None:
        """Forget parked outputs (re-sent by an operator)."""
        await self.pool.execute("DELETE FROM outbox_parked WHERE id = ANY($1::bigint[])", ids)

    async def read_log(self, incident_id: str | None = None) -> list[dict[str, Any]]:
        """The event log (of one incident or all), in (incident, seq) order."""
        rows = await self.pool.fetch(SQL["read_log"], incident_id)
        return [dict(r) for r in rows]

    async def read_firings(self) -> list[tuple[str, datetime, datetime | None, datetime | None]]:
        """Every recorded timer firing (incident id, moment, until, breach until): `replay.Firing`s."""
        rows = await self.pool.fetch(
            "SELECT incident_id, fired_at, fire_until, breach_until FROM timer_firings"
            " ORDER BY incident_id, fired_at"
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def incident_rows(self) -> dict[str, dict[str, Any]]:
        """Every incident projection body, by id (for replay checks)."""
        rows = await self.pool.fetch("SELECT incident_id, body FROM incidents")
        return {r["incident_id"]: r["body"] for r in rows}

    async def timer_rows(self) -> dict[str, datetime]:
        """Every durable timer's due moment, by incident id (for replay checks)."""
        rows = await self.pool.fetch("SELECT incident_id, due_at FROM timers")
        return {r["incident_id"]: r["due_at"] for r in rows}

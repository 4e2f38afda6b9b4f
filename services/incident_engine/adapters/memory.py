"""In-memory twin of the event store, for unit tests of the engine (same contract as Postgres)."""

from __future__ import annotations

import copy
from collections.abc import Awaitable
from datetime import datetime
from typing import Any

import orjson

from incident_engine.adapters.store import (
    BatchWrite,
    EventKey,
    OffsetConflict,
    OutboxRow,
    RepeatConflict,
    TimerRow,
)
from incident_engine.domain import Incident


class MemoryStore:
    """EventStore in dicts; `commit` is all-or-nothing like the Postgres transaction."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, str, int], int] = {}
        self.log: dict[tuple[str, int], dict[str, Any]] = {}
        self.event_ids: set[EventKey] = set()  # (source, id) of every logged event
        self.incidents: dict[str, dict[str, Any]] = {}
        self.timers: dict[str, TimerRow] = {}
        self.outbox: list[OutboxRow] = []
        # (incident id, fired at, until, breach until): see BatchWrite.firings
        self.firings: set[tuple[str, datetime, datetime, datetime]] = set()
        self.owners: dict[tuple[str, str, int], int] = {}  # (group, topic, partition) -> epoch
        self.parked: list[tuple[OutboxRow, str]] = []
        self._next_id = 1

    async def claim(self, group_id: str, topic: str, partitions: list[int]) -> dict[int, int]:
        """Take ownership of partitions: bump and return their epochs (older ones are fenced off)."""
        for partition in partitions:
            key = (group_id, topic, partition)
            self.owners[key] = self.owners.get(key, 0) + 1
        return {p: self.owners[(group_id, topic, p)] for p in partitions}

    async def epochs(self, group_id: str, topic: str, partitions: list[int]) -> dict[int, int]:
        """The current ownership epoch of these partitions (those ever claimed)."""
        owners = self.owners.items()
        return {p: e for (g, t, p), e in owners if g == group_id and t == topic and p in partitions}

    async def committed_offsets(self, group_id: str, topic: str, partitions: list[int]) -> dict[int, int]:
        """Next offset to consume per partition, for those that have one."""
        return {
            p: o for (g, t, p), o in self.offsets.items() if g == group_id and t == topic and p in partitions
        }

    async def known_event_ids(self, event_keys: list[EventKey]) -> set[EventKey]:
        """Which of these input events, by (source, id), are already in the event log."""
        return self.event_ids.intersection(event_keys)

    async def load_incidents(self, incident_ids: list[str]) -> dict[str, Incident]:
        """Current state of these incidents (absent ones are unknown)."""
        return {i: Incident.from_json(self.incidents[i]) for i in incident_ids if i in self.incidents}

    async def lookup(
        self, event_keys: list[EventKey], incident_ids: list[str]
    ) -> tuple[set[EventKey], dict[str, Incident]]:
        """`known_event_ids` and `load_incidents` together."""
        return await self.known_event_ids(event_keys), await self.load_incidents(incident_ids)

    async def load_timers(self, partitions: list[int]) -> list[TimerRow]:
        """Every pending timer row of these partitions."""
        return [copy.copy(t) for t in self.timers.values() if t.partition in partitions]

    async def commit(self, batch: BatchWrite, after: Awaitable[object] | None = None) -> None:
        """Apply the batch atomically; raise OffsetConflict (changing nothing) when an epoch is stale,
        the offsets moved or a projection moved past the seq the batch was decided from. The states
        are taken at once, then written once `after` (the previous batch's commit) is done."""
        bodies = {incident_id: incident.to_json() for incident_id, (incident, _) in batch.incidents.items()}
        if after is not None:
            await after
        for partition, epoch in batch.fence().items():
            if self.owners.get((batch.group_id, batch.input_topic, partition), 0) != epoch:
                raise OffsetConflict(f"{batch.input_topic}[{partition}]: epoch {epoch} is stale")
        for (topic, partition), (expected, _) in batch.offsets.items():
            stored = self.offsets.get((batch.group_id, topic, partition))
            if stored is not None and expected is not None and stored > expected:
                raise OffsetConflict(f"{topic}[{partition}] moved past offset {expected} under this consumer")
        keys = [(event.source, event.event_id) for event in batch.events]
        if len(set(keys)) != len(keys):  # as the unique constraint (event_id, source) within a batch
            raise ValueError("event log conflict: an event (source, id) twice in one batch")
        for event, key in zip(batch.events, keys, strict=True):
            if key in self.event_ids:  # as the unique constraint (event_id, source) across batches
                raise RepeatConflict(key)
            if (event.incident_id, event.seq) in self.log:
                raise ValueError(f"event log conflict on {event.incident_id}#{event.seq} / {key}")
        for incident_id in batch.incidents:
            if (incident_id in batch.created) == (incident_id in self.incidents):
                raise ValueError(f"incident {incident_id} created twice, or changed before it was created")
            expected = batch.decided_from.get(incident_id)
            body = self.incidents.get(incident_id)
            moved = body is not None and expected is not None and body["seq"] != expected
            if moved and incident_id not in batch.created:
                raise OffsetConflict(f"incident {incident_id} moved past seq {expected}; batch refused")
        for (topic, partition), (_, next_offset) in batch.offsets.items():
            self.offsets[(batch.group_id, topic, partition)] = next_offset
        for event in batch.events:
            self.event_ids.add((event.source, event.event_id))
            self.log[(event.incident_id, event.seq)] = {
                "incident_id": event.incident_id, "seq": event.seq, "event_id": event.event_id,
                "type": event.type, "source": event.source, "event_time": event.event_time,
                "processed_at": event.processed_at, "kafka_partition": event.partition,
                "kafka_offset": event.offset, "envelope": orjson.loads(event.envelope),
                "trace_context": event.trace_context,
            }  # fmt: skip
        self.incidents.update(bodies)
        for incident_id, row in batch.timers.items():
            if row is None:
                self.timers.pop(incident_id, None)
            else:
                self.timers[incident_id] = copy.copy(row)
        self.firings.update((i, at, until, held) for (i, at), (_, until, held) in batch.firings.items())
        if batch.sent_outbox:
            gone = set(batch.sent_outbox)
            self.outbox = [row for row in self.outbox if row.id not in gone]
        row_ids: dict[int, int] = {}  # one row id per input partition and batch, as in Postgres
        for out in batch.outbox:
            if out.partition not in row_ids:
                row_ids[out.partition] = self._next_id
                self._next_id += 1
            rid = out.id = row_ids[out.partition]
            self.outbox.append(
                OutboxRow(out.partition, out.topic, out.key, out.event_id, out.payload, out.headers, rid)
            )

    async def pending_outbox(self, partitions: list[int], limit: int) -> list[OutboxRow]:
        """The oldest unsent outputs of these partitions, in commit order (`limit` counts rows of batches)."""
        mine = [row for row in self.outbox if row.partition in partitions]
        keep = sorted({row.id for row in mine})[:limit]
        return [row for row in mine if row.id in keep]

    async def mark_sent(self, ids: list[int]) -> None:
        """Forget outbox rows that Kafka acknowledged."""
        gone = set(ids)
        self.outbox = [row for row in self.outbox if row.id not in gone]

    async def outbox_backlog(self) -> int:
        """How many outputs wait for the relay."""
        return len(self.outbox)

    async def park(self, row: OutboxRow, error: str) -> None:
        """Keep an output the broker refused for good (with its error) out of the relay's way."""
        self.parked.append((copy.copy(row), error))
        self.parked[-1][0].id = len(self.parked)

    async def parked_outputs(self) -> list[tuple[OutboxRow, str]]:
        """Every parked output with the broker's error, oldest first (`id` is the parked row's)."""
        return [(copy.copy(row), error) for row, error in self.parked]

    async def unpark(self, ids: list[int]) -> None:
        """Forget parked outputs (re-sent by an operator)."""
        self.parked = [(row, error) for row, error in self.parked if row.id not in ids]

    async def read_log(self, incident_id: str | None = None) -> list[dict[str, Any]]:
        """The event log (of one incident or all), in (incident, seq) order."""
        return [dict(v) for k, v in sorted(self.log.items()) if incident_id is None or k[0] == incident_id]

    async def read_firings(self) -> list[tuple[str, datetime, datetime | None, datetime | None]]:
        """Every recorded timer firing (incident id, moment, until, breach until): `replay.Firing`s."""
        return sorted(self.firings)

    async def incident_rows(self) -> dict[str, dict[str, Any]]:
        """Every incident projection body, by id."""
        return copy.deepcopy(self.incidents)

    async def timer_rows(self) -> dict[str, datetime]:
        """Every durable timer's due moment, by incident id."""
        return {i: t.due_at for i, t in self.timers.items()}

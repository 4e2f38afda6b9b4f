"""The in-memory timer heap of the owned partitions: the earliest due moment of each incident."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from datetime import datetime

from incident_engine.gc_pause import gc_paused


class TimerHeap:
    """Due moments by incident, fired in order; stale heap entries are skipped, not searched for."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._armed: dict[str, tuple[float, int]] = {}  # incident -> (due timestamp, partition)

    def __len__(self) -> int:
        return len(self._armed)

    def arm(self, incident_id: str, partition: int, due_at: datetime | None) -> None:
        """Set (or with None, clear) the next due moment of an incident."""
        if due_at is None:
            self._armed.pop(incident_id, None)
            return
        due = due_at.timestamp()
        if self._armed.get(incident_id, (None, None))[0] == due:
            return
        self._armed[incident_id] = (due, partition)
        heapq.heappush(self._heap, (due, incident_id))

    def load(self, rows: Iterable[tuple[str, int, datetime]]) -> None:
        """Arm many timers at once (on partition assignment), heapifying once."""
        with gc_paused():  # a million acyclic tuples
            armed = self._armed
            for incident_id, partition, due_at in rows:
                armed[incident_id] = (due_at.timestamp(), partition)
            self._heap = [(due, incident_id) for incident_id, (due, _) in armed.items()]
            heapq.heapify(self._heap)

    def seconds_until_next(self, now: datetime) -> float | None:
        """How long until the earliest timer is due (0 when overdue), None when nothing is armed."""
        self._drop_stale()
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - now.timestamp())

    def pop_due(self, now: datetime, limit: int = 1000) -> list[tuple[str, int]]:
        """Take up to `limit` incidents whose timer is due at `now`, as (incident id, partition)."""
        cutoff = now.timestamp()
        due: list[tuple[str, int]] = []
        while self._heap and self._heap[0][0] <= cutoff and len(due) < limit:
            stamp, incident_id = heapq.heappop(self._heap)
            armed = self._armed.get(incident_id)
            if armed is not None and armed[0] == stamp:
                del self._armed[incident_id]
                due.append((incident_id, armed[1]))
        return due

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget the timers of partitions this engine no longer owns."""
        gone = set(partitions)
        self._armed = {i: v for i, v in self._armed.items() if v[1] not in gone}
        self._heap = [(due, i) for i, (due, _) in self._armed.items()]
        heapq.heapify(self._heap)

    def _drop_stale(self) -> None:
        while self._heap:
            stamp, incident_id = self._heap[0]
            armed = self._armed.get(incident_id)
            if armed is not None and armed[0] == stamp:
                return
            heapq.heappop(self._heap)

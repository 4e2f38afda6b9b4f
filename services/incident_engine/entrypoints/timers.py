"""The in-memory timer heaps of the owned partitions: when each incident's next timer may fire.

One heap per partition, because each partition has its own SLA time (its watermark, see
`EngineLoop`): a partition that reads a backlog must not hold back the timers of one that is caught up.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from datetime import datetime

from incident_engine.gc_pause import gc_paused


class TimerHeap:
    """Wake moments by incident, fired in order per partition; stale entries are skipped, not searched for.

    A wake moment is the due moment of the incident's next timer, plus the grace when that timer is a
    breach or a failover order (see `BatchProcessor.wake_of`). An entry fires once its partition's
    watermark has passed it (strictly: an event stamped at the very moment may still come).
    """

    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[float, str]]] = {}
        self._armed: dict[str, tuple[float, int]] = {}  # incident -> (wake timestamp, partition)

    def __len__(self) -> int:
        return len(self._armed)

    def arm(self, incident_id: str, partition: int, wake_at: datetime | None) -> None:
        """Set (or with None, clear) the next wake moment of an incident."""
        if wake_at is None:
            self._armed.pop(incident_id, None)
            return
        wake = wake_at.timestamp()
        if self._armed.get(incident_id, (None, None))[0] == wake:
            return
        self._armed[incident_id] = (wake, partition)
        heapq.heappush(self._heaps.setdefault(partition, []), (wake, incident_id))

    def load(self, rows: Iterable[tuple[str, int, datetime]]) -> None:
        """Arm many timers at once (on partition assignment), heapifying once per partition.

        The rows hold due moments; a breach's grace is added when it is first popped (the row does not
        say which kind its timer is), which costs that incident one early, empty turn."""
        with gc_paused():  # a million acyclic tuples
            armed = self._armed
            for incident_id, partition, due_at in rows:
                armed[incident_id] = (due_at.timestamp(), partition)
            self._rebuild()

    def next_wake(self, partitions: Iterable[int]) -> float | None:
        """The earliest wake timestamp among `partitions`, None when none of them has a timer."""
        earliest: float | None = None
        for partition in partitions:
            heap = self._heaps.get(partition)
            if heap:
                self._drop_stale(heap)
                if heap and (earliest is None or heap[0][0] < earliest):
                    earliest = heap[0][0]
        return earliest

    def pop_due(self, watermarks: Mapping[int, float], limit: int = 1000) -> list[tuple[str, int]]:
        """Take up to `limit` incidents whose wake moment is before their partition's watermark,
        as (incident id, partition); partitions without a watermark fire nothing."""
        due: list[tuple[str, int]] = []
        armed = self._armed
        for partition, watermark in watermarks.items():
            heap = self._heaps.get(partition)
            while heap and heap[0][0] < watermark and len(due) < limit:
                stamp, incident_id = heapq.heappop(heap)
                entry = armed.get(incident_id)
                if entry is not None and entry[0] == stamp:
                    del armed[incident_id]
                    due.append((incident_id, entry[1]))
        return due

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget the timers of partitions this engine no longer owns."""
        gone = set(partitions)
        self._armed = {i: v for i, v in self._armed.items() if v[1] not in gone}
        self._rebuild()

    def _rebuild(self) -> None:
        heaps: dict[int, list[tuple[float, str]]] = {}
        for incident_id, (wake, partition) in self._armed.items():
            heaps.setdefault(partition, []).append((wake, incident_id))
        for heap in heaps.values():
            heapq.heapify(heap)
        self._heaps = heaps

    def _drop_stale(self, heap: list[tuple[float, str]]) -> None:
        armed = self._armed
        while heap:
            stamp, incident_id = heap[0]
            entry = armed.get(incident_id)
            if entry is not None and entry[0] == stamp:
                return
            heapq.heappop(heap)

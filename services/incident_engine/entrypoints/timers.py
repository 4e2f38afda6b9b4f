"""The in-memory timer heaps of the owned partitions: when each incident's next timer may fire.

One heap per partition, because each partition has its own SLA time (its watermark, see
`EngineLoop`): a partition that reads a backlog must not hold back the timers of one that is caught up.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
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
        # incident -> wake timestamp, and incident -> partition: two maps of atoms (str -> float,
        # str -> int), never one of tuples. A dict holding only atoms is not tracked by the cyclic
        # collector; storing one new tuple in it (as arming did) makes it tracked again, young, and
        # every collection then walked its million entries: pauses of 40 ms (several hundred on a
        # busy host) on each generation in turn, a few seconds apart, that held every due timer.
        self._wake: dict[str, float] = {}
        self._partition: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._wake)

    def arm(self, incident_id: str, partition: int, wake_at: datetime | None) -> None:
        """Set (or with None, clear) the next wake moment of an incident."""
        if wake_at is None:
            self._wake.pop(incident_id, None)
            self._partition.pop(incident_id, None)
            return
        self.arm_at(incident_id, partition, wake_at.timestamp())

    def arm_at(self, incident_id: str, partition: int, wake: float) -> None:
        """Set the next wake moment of an incident (a timestamp)."""
        if self._wake.get(incident_id) == wake and self._partition.get(incident_id) == partition:
            return
        self._wake[incident_id] = wake
        self._partition[incident_id] = partition
        heapq.heappush(self._heaps.setdefault(partition, []), (wake, incident_id))

    def load(self, rows: Iterable[tuple[str, int, datetime]]) -> None:
        """Arm many timers at once (on partition assignment), heapifying once per partition.

        The rows hold due moments; a breach's grace is added when it is first popped (the row does not
        say which kind its timer is), which costs that incident one early, empty turn."""
        with gc_paused():  # a million acyclic tuples
            wakes, owners = self._wake, self._partition
            for incident_id, partition, due_at in rows:
                wakes[incident_id] = due_at.timestamp()
                owners[incident_id] = partition
            self._rebuild()

    def next_wake(self, partitions: Iterable[int]) -> float | None:
        """The earliest wake timestamp among `partitions`, None when none of them has a timer."""
        earliest: float | None = None
        for partition in partitions:
            heap = self._heaps.get(partition)
            if heap:
                self._drop_stale(heap, partition)
                if heap and (earliest is None or heap[0][0] < earliest):
                    earliest = heap[0][0]
        return earliest

    def upcoming(
        self, partitions: Iterable[int], before: float, limit: int, skip: Callable[[str], bool] | None = None
    ) -> list[str]:
        """Up to `limit` incidents of `partitions` whose wake moment is before `before`, earliest
        first, without taking them; those `skip` says are passed over (not counted). A best-first
        walk of each heap's top (a heap's children come no earlier than their parent): it costs
        what it finds, not the heap's size."""
        found: list[str] = []
        wakes, owners = self._wake, self._partition
        frontier: list[tuple[float, int, int]] = []  # (wake, partition, index in its heap)
        for partition in partitions:
            heap = self._heaps.get(partition)
            if heap and heap[0][0] < before:
                frontier.append((heap[0][0], partition, 0))
        heapq.heapify(frontier)
        while frontier and len(found) < limit:
            _, partition, i = heapq.heappop(frontier)
            heap = self._heaps[partition]
            stamp, incident_id = heap[i]
            current = wakes.get(incident_id) == stamp and owners.get(incident_id) == partition
            if current and (skip is None or not skip(incident_id)):
                found.append(incident_id)
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap) and heap[child][0] < before:
                    heapq.heappush(frontier, (heap[child][0], partition, child))
        return found

    def pop_due(self, watermarks: Mapping[int, float], limit: int = 1000) -> list[tuple[str, int]]:
        """Take up to `limit` incidents whose wake moment is before their partition's watermark,
        as (incident id, partition); partitions without a watermark fire nothing."""
        return [(incident_id, partition) for incident_id, partition, _ in self.pop_due_at(watermarks, limit)]

    def pop_due_at(self, watermarks: Mapping[int, float], limit: int = 1000) -> list[tuple[str, int, float]]:
        """`pop_due`, with each wake moment (to put one back as it was: `arm_at`)."""
        due: list[tuple[str, int, float]] = []
        wakes, owners = self._wake, self._partition
        for partition, watermark in watermarks.items():
            heap = self._heaps.get(partition)
            while heap and heap[0][0] < watermark and len(due) < limit:
                stamp, incident_id = heapq.heappop(heap)
                if wakes.get(incident_id) == stamp and owners.get(incident_id) == partition:
                    del wakes[incident_id], owners[incident_id]
                    due.append((incident_id, partition, stamp))
        return due

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget the timers of partitions this engine no longer owns."""
        gone = set(partitions)
        if gone.isdisjoint(self._heaps):  # every armed timer has an entry in its partition's heap
            return
        if gone.issuperset(self._heaps):  # all of them (a rebalance revokes everything): no pass
            self._wake, self._partition, self._heaps = {}, {}, {}
            return
        owners = {i: p for i, p in self._partition.items() if p not in gone}
        self._wake = {i: w for i, w in self._wake.items() if i in owners}
        self._partition = owners
        self._rebuild()

    def _rebuild(self) -> None:
        heaps: dict[int, list[tuple[float, str]]] = {}
        owners = self._partition
        for incident_id, wake in self._wake.items():
            heaps.setdefault(owners[incident_id], []).append((wake, incident_id))
        for heap in heaps.values():
            heapq.heapify(heap)
        self._heaps = heaps

    def _drop_stale(self, heap: list[tuple[float, str]], partition: int) -> None:
        wakes, owners = self._wake, self._partition
        while heap:
            stamp, incident_id = heap[0]
            if wakes.get(incident_id) == stamp and owners.get(incident_id) == partition:
                return
            heapq.heappop(heap)

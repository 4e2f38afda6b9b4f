"""Keeping the cyclic garbage collector off long-lived and bulk-built acyclic objects."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator

_OLDEST = 2  # CPython's oldest generation


@contextlib.contextmanager
def gc_paused(*, keep: bool = False) -> Iterator[None]:
    """No cyclic collections inside: building millions of acyclic objects (timers, replayed incidents)
    would otherwise trigger collections that rescan everything alive, for nothing; reference counting
    still frees what dies.

    Everything made inside is still young when collections resume, and the first one scans all of
    it (half a second for a million-event simulation). With `keep`, for what outlives the block
    (a simulation's or a replay's incidents), every object alive is frozen instead (`gc.freeze`): no
    collection scans them again, and reference counting still frees them. Only for a command's run:
    cyclic garbage alive then is never collected.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if keep:
            gc.freeze()
        if enabled:
            gc.enable()


class SurvivorFreezer:
    """For a long-running engine: freeze what survives each full collection, so the next ones do not
    scan it again; every `reclaim_every` seconds, unfreeze instead, so one full collection reclaims
    the garbage cycles that formed meanwhile among frozen objects.

    The engine's long-lived state (cached incidents, their timers) is promoted to the oldest generation
    batch after batch, and every full collection walked all of it: pauses that grew with the cache
    (tens of ms, several times that on a busy host) and held every due timer. A full collection of
    only what was promoted since the last one stays short. Reference counting frees frozen objects
    as usual; what freezing delays is only the collection of garbage cycles among objects that were
    alive at a freeze, until the next reclaim (one longer pause per period).
    """

    def __init__(self, reclaim_every: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.reclaim_every = reclaim_every
        self.clock = clock
        self.period_started = clock()
        self.reclaiming = False  # unfrozen: the next full collection scans everything
        self.freezes = self.reclaims = 0

    def install(self) -> None:
        """Start freezing after full collections (process-wide)."""
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        """Stop (what is frozen stays frozen)."""
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase != "stop" or info["generation"] != _OLDEST:
            return
        now = self.clock()
        if self.reclaiming:  # this collection scanned everything: a new period starts
            self.reclaiming = False
            self.period_started = now
        elif now - self.period_started >= self.reclaim_every:
            gc.unfreeze()  # into the oldest generation: the next full collection scans it all
            self.reclaiming = True
            self.reclaims += 1
            return
        gc.freeze()
        self.freezes += 1


# Young objects a cyclic collection waits for (Python's default: 700). A batch makes some tens of
# thousands of objects that live until its commit, a little longer than 700 allocations: with the
# default they are promoted, generation by generation, into the old one, whose growth then triggers
# full collections that rescan every cached incident (measured under 30,000 acknowledgements: 13
# full collections, 1.2 s of GC in all; with this threshold 1 and 0.36 s). What dies young is freed
# by reference counting as before; only cyclic garbage waits a little longer.
SERVICE_GC_THRESHOLD = 20_000


def tune_for_batches() -> None:
    """Collect the youngest generation less often in a long-running engine (see the constant)."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(SERVICE_GC_THRESHOLD, older, oldest)

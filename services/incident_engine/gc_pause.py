"""Pausing the cyclic garbage collector around bulk allocation of acyclic objects."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


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

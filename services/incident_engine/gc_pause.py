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

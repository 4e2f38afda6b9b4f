"""Pausing the cyclic garbage collector around bulk allocation of acyclic objects."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collections inside: building millions of acyclic objects (timers, replayed incidents)
    would otherwise trigger collections that rescan everything alive, for nothing; reference counting
    still frees what dies."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

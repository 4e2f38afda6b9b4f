"""The C allocator's heap settings for a long-running engine (glibc only; elsewhere nothing changes).

Every batch builds its statement's parameters in buffers of hundreds of KB (asyncpg grows a buffer
by a KB past 64 KB, so by a `realloc` per row of a large array), and frees them. With glibc's
defaults the heap grows by `brk` for each of those `realloc`s and is trimmed back after each free:
a system call per row, batch after batch. Profiled under `bench_write_cost.py` (py-spy --native),
that was most of the cost of a 1 KB text element (1.9 µs instead of 0.6). A top pad of 16 MiB grows
the heap in steps of that size, and a trim threshold of 64 MiB keeps freed top memory for the next
batch: at most that much memory is held back from the OS. Setting either turns off glibc's dynamic
mmap threshold, which would leave every buffer past 128 KiB to `mmap`/`mremap`/`munmap` in every
batch: the mmap threshold is set too, to 32 MiB (glibc's maximum), so those buffers stay in the heap.

Operators keep the last word: with `MALLOC_TOP_PAD_`, `MALLOC_TRIM_THRESHOLD_`,
`MALLOC_MMAP_THRESHOLD_` or `GLIBC_TUNABLES` in the environment, this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
TOP_PAD = 16 * 1024 * 1024
TRIM_THRESHOLD = 64 * 1024 * 1024
MMAP_THRESHOLD = 32 * 1024 * 1024  # HEAP_MAX_SIZE / 2 on 64-bit: glibc refuses more
OPERATOR_SETTINGS = ("MALLOC_TOP_PAD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES")


def tune_allocator() -> bool:
    """Set the heap's top pad, trim and mmap thresholds (see the module); whether they were set."""
    if any(name in os.environ for name in OPERATOR_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no C library with mallopt in this process (not glibc)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = all(
        mallopt(parameter, value) == 1
        for parameter, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TOP_PAD, TOP_PAD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
    )  # fmt: skip
    log.debug("allocator: mmap threshold %d, top pad %d, trim threshold %d: %s",
              MMAP_THRESHOLD, TOP_PAD, TRIM_THRESHOLD, done)  # fmt: skip
    return done

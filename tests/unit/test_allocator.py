"""The allocator settings of a running engine: freed heap memory stays for the next batch, and an
operator's own glibc settings win."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

# In a fresh interpreter: take 4 MiB of the heap in 64 KiB blocks (below the mmap threshold), free
# them all, and say how far the heap's top moved back (bytes given back to the OS by trimming).
_PROBE = """
import ctypes, sys
from incident_engine.allocator import tune_allocator
libc = ctypes.CDLL(None)
libc.malloc.restype = libc.sbrk.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.sbrk.argtypes = [ctypes.c_ssize_t]
tuned = tune_allocator() if sys.argv[1] == "tune" else None
blocks = [libc.malloc(64 * 1024) for _ in range(64)]
top = libc.sbrk(0)
for block in reversed(blocks):
    libc.free(block)
print(tuned, top - libc.sbrk(0))
"""


def _probe(mode: str, **env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], int(out[1])


def test_freed_heap_is_kept_for_the_next_batch_once_tuned() -> None:
    tuned, given_back = _probe("tune")
    assert tuned == "True"
    assert given_back == 0  # kept: the next batch's buffers grow without a system call
    untuned, given_back = _probe("plain")
    assert untuned == "None"
    assert given_back >= 3 * 1024 * 1024  # glibc's default trims it back at once: the probe can tell


def test_an_operators_glibc_settings_are_left_alone() -> None:
    tuned, given_back = _probe("tune", MALLOC_TRIM_THRESHOLD_="131072")
    assert tuned == "False"
    assert given_back >= 3 * 1024 * 1024  # their (default-like) threshold, not ours

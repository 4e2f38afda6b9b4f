"""The allocator settings of a running engine: a batch's large buffers grow inside the heap, freed
heap memory stays for the next batch, and an operator's own glibc settings win."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt's settings are glibc's"),
]

# In a fresh interpreter: grow one buffer by 1 KiB reallocs to 1 MiB (past glibc's default mmap
# threshold, as asyncpg grows a batch's parameters); say whether it lives in the heap (the heap's
# top moved up by its size) and how far the top moved back once 4 MiB of 64 KiB blocks are freed.
_PROBE = """
import ctypes, sys
from incident_engine.allocator import tune_allocator
libc = ctypes.CDLL(None)
libc.malloc.restype = libc.realloc.restype = libc.sbrk.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.realloc.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.sbrk.argtypes = [ctypes.c_ssize_t]
tuned = tune_allocator() if sys.argv[1] == "tune" else None
start = libc.sbrk(0)
buffer = libc.malloc(64 * 1024)
for size in range(65 * 1024, 1024 * 1024 + 1, 1024):
    buffer = libc.realloc(buffer, size)
in_heap = libc.sbrk(0) - start >= 1024 * 1024
libc.free(buffer)
blocks = [libc.malloc(64 * 1024) for _ in range(64)]
top = libc.sbrk(0)
for block in reversed(blocks):
    libc.free(block)
print(tuned, in_heap, top - libc.sbrk(0))
"""


def _probe(mode: str, **env: str) -> tuple[str, str, int]:
    clean = {
        k: v for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")
    }  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], env={**clean, **env}, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], out[1], int(out[2])


def test_large_buffers_stay_in_the_heap_and_freed_heap_is_kept_once_tuned() -> None:
    tuned, in_heap, given_back = _probe("tune")
    assert tuned == "True"
    assert in_heap == "True"  # grown in the heap, not by mremap in every batch
    assert given_back == 0  # kept: the next batch's buffers grow without a system call
    untuned, in_heap, given_back = _probe("plain")
    assert untuned == "None"
    assert in_heap == "False"  # glibc's default: past 128 KiB the buffer is mmapped
    assert given_back >= 3 * 1024 * 1024  # and freed heap is trimmed back at once


def test_an_operators_glibc_settings_are_left_alone() -> None:
    tuned, _, given_back = _probe("tune", MALLOC_TRIM_THRESHOLD_="131072")
    assert tuned == "False"
    assert given_back >= 3 * 1024 * 1024  # their (default-like) threshold, not ours

"""Keeping the cyclic collector off long-lived state: survivors of a full collection are frozen, and
garbage cycles among them are reclaimed once per period."""

from __future__ import annotations

import gc
import weakref

import pytest

from incident_engine.gc_pause import SurvivorFreezer

pytestmark = pytest.mark.unit


class Node:
    """A container the collector tracks; two of them pointing at each other make a cycle."""

    def __init__(self) -> None:
        self.other: Node | None = None


def _cycle() -> tuple[Node, weakref.ref[Node]]:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return a, weakref.ref(b)


def test_survivors_of_a_full_collection_are_frozen_and_their_cycles_reclaimed_each_period() -> None:
    now = [0.0]
    freezer = SurvivorFreezer(reclaim_every=600.0, clock=lambda: now[0])
    kept, kept_ref = _cycle()
    gc.collect()
    freezer.install()
    try:
        gc.collect()
        assert freezer.freezes == 1
        assert kept not in gc.get_objects(2)  # frozen: the next full collections do not scan it
        gc.collect(0)  # a young collection does not freeze anything
        assert freezer.freezes == 1
        del kept
        gc.collect()
        assert kept_ref() is not None  # a frozen cycle waits for the period's reclaim
        now[0] = 600.0
        gc.collect()  # the period is over: this one unfreezes
        assert (freezer.reclaims, freezer.reclaiming) == (1, True)
        gc.collect()  # this one scans everything, then freezes again
        assert kept_ref() is None
        assert not freezer.reclaiming
        alive, alive_ref = _cycle()
        gc.collect()
        assert alive_ref() is alive.other  # survivors are never freed while reachable
    finally:
        freezer.uninstall()
        gc.unfreeze()
    freezer.uninstall()  # twice is harmless
    assert freezer not in gc.callbacks

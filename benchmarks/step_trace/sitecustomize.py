"""Per-step timings of an engine process, for finding what holds a due timer (issue 17).

Opt-in and for benchmarks only: with this folder on PYTHONPATH and STEP_TRACE=FILE in the environment,
every Python process started (e.g. the engine `bench_timers.py` spawns) appends one line per loop step
to FILE: wall time, step, fetch wait, decide, the lookup round trip inside it (and how many incidents
it asked for), the wait for an older commit, events, firings and their worst lateness (ms); the
partitions behind; the event loop's worst lag since the last line (a 1 ms sleeper's); the timers fired
meanwhile (while the step waited for Postgres) and their worst lateness; the longest garbage
collection and the prefetch time that ended during the step; and the time spent noting what was
read (positions, caught-up partitions). A step's time not in its fetch, decide or wait for an older
commit is mostly its wait for room among the commits under way (`_fire_meanwhile` runs then).

    STEP_TRACE=/tmp/steps.log PYTHONPATH=benchmarks/step_trace \\
        .venv/bin/python benchmarks/bench_timers.py --timers 1000000 --duration 40
    .venv/bin/python benchmarks/step_trace/summary.py /tmp/steps.log --last 40
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

if os.environ.get("STEP_TRACE"):
    from incident_engine.adapters.postgres import store as _store
    from incident_engine.entrypoints import consumer as _consumer
    from incident_engine.entrypoints import processor as _processor

    _out = open(os.environ["STEP_TRACE"], "a", buffering=1)  # noqa: SIM115 (open for the process's life)
    _now: dict[str, float] = {}

    def _timed(name: str, method: Any) -> Any:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await method(*args, **kwargs)
            finally:
                _now[name] = _now.get(name, 0.0) + time.perf_counter() - started
                if name == "lookup":
                    _now["asked"] = len(args[2])  # (self, event keys, incident ids)

        return timed

    _processor.BatchProcessor.decide = _timed("decide", _processor.BatchProcessor.decide)  # type: ignore[method-assign]
    _consumer.EngineLoop._finish_oldest = _timed("finish", _consumer.EngineLoop._finish_oldest)  # type: ignore[method-assign]
    _store.PostgresStore.lookup = _timed("lookup", _store.PostgresStore.lookup)  # type: ignore[method-assign]
    _step = _consumer.EngineLoop.step
    _meanwhile = _consumer.EngineLoop._fire_meanwhile
    _chain = _consumer.EngineLoop._chain
    _ticking = [False]

    async def _traced_meanwhile(self: Any, *args: Any, **kwargs: Any) -> Any:
        _ticking[0] = True
        try:
            return await _meanwhile(self, *args, **kwargs)
        finally:
            _ticking[0] = False

    async def _traced_chain(self: Any, result: Any, started: float) -> Any:
        if _ticking[0] and result.fired_lateness:  # a batch of timers fired while one waited
            _now["ticked"] = _now.get("ticked", 0.0) + len(result.fired_lateness)
            _now["tick_late"] = max(_now.get("tick_late", 0.0), max(result.fired_lateness))
        return await _chain(self, result, started)

    import gc as _gc

    _gc_started = [0.0]

    def _gc_timed(phase: str, info: dict[str, int]) -> None:  # the longest collection since the last line
        if phase == "start":
            _gc_started[0] = time.perf_counter()
        else:
            pause = time.perf_counter() - _gc_started[0]
            _now["gc"] = max(_now.get("gc", 0.0), pause)

    _gc.callbacks.append(_gc_timed)
    _consumer.EngineLoop.prefetch = _timed("prefetch", _consumer.EngineLoop.prefetch)  # type: ignore[method-assign]
    _consumer.EngineLoop.note_read = _timed("note", _consumer.EngineLoop.note_read)  # type: ignore[method-assign]
    _consumer.EngineLoop._fire_meanwhile = _traced_meanwhile  # type: ignore[method-assign]
    _consumer.EngineLoop._chain = _traced_chain  # type: ignore[method-assign]

    _lag = [0.0]  # the event loop's longest lateness since the last step line (a 1 ms sleeper's)

    async def _sample_lag() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            _lag[0] = max(_lag[0], time.perf_counter() - started - 0.001)

    async def _traced_step(self: Any) -> Any:
        if not hasattr(_sample_lag, "task"):
            _sample_lag.task = asyncio.get_running_loop().create_task(_sample_lag())  # type: ignore[attr-defined]
        consumer = self.consumer
        if consumer is not None and not getattr(consumer, "_step_traced", False):
            consumer.getmany = _timed("fetch", consumer.getmany)
            consumer._step_traced = True
        _now.clear()
        started = time.perf_counter()
        result = await _step(self)
        ms = {k: 1000 * v for k, v in _now.items() if k not in ("asked", "ticked")}
        late = max(result.fired_lateness) * 1000 if result is not None and result.fired_lateness else -1.0
        step_ms = 1000 * (time.perf_counter() - started)
        _out.write(
            f"{time.time():.4f} step={step_ms:.1f} fetch={ms.get('fetch', 0):.1f}"
            f" decide={ms.get('decide', 0):.1f} lookup={ms.get('lookup', 0):.1f}"
            f" asked={_now.get('asked', 0):.0f}"
            f" finish={ms.get('finish', 0):.1f} events={len(result.write.events) if result else 0}"
            f" fired={len(result.fired_lateness) if result else 0} late={late:.1f}"
            f" behind={len(self.assigned - self.caught_up)} lag={1000 * _lag[0]:.1f}"
            f" ticked={_now.get('ticked', 0):.0f} tick_late={ms.get('tick_late', -1.0):.1f}"
            f" gc={ms.get('gc', 0):.1f} prefetch={ms.get('prefetch', 0):.1f} note={ms.get('note', 0):.1f}\n"
        )
        _lag[0] = 0.0
        return result

    _consumer.EngineLoop.step = _traced_step  # type: ignore[method-assign]

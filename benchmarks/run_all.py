"""Run every benchmark against one real Kafka and PostgreSQL; write results.json and results.md.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only timers,restart]

Each benchmark runs alone in a child process (its own figures, its own baseline measured in the
same run) and writes JSON; this runner starts Kafka and PostgreSQL once (or uses
KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL), passes them on, and tabulates: figure, value, baseline,
ratio, target, met?, the machine's speed when it ran, and the command that reproduces the figure alone.
The machine's speed is measured in the same run, right before each benchmark: a fixed pure-Python
loop (`cpu_probe`, millions of operations/s, median of 5) and the load average; the header gives
them at the start and at the end. A slow or busy host shows there, a slow engine in the ratios.
A benchmark script that is missing (not landed yet) or that fails gets a line saying so instead of
failing the whole run.
`--quick` runs small sizes (to check the pipeline; the figures are then not the targets' sizes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from devstack.stack import start_kafka, start_postgres

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Bench:
    """One benchmark script, its arguments (full and quick) and how to read its figures."""

    name: str
    script: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    rows: Callable[[dict[str, Any]], list[Row]]


Row = dict[str, Any]  # figure, value, baseline, ratio, target, met, unit (+ machine, command)
_PROBE_OPS = 200_000  # operations of one cpu_probe round


def cpu_probe(rounds: int = 5) -> float:
    """This machine's pure-Python speed now: millions of operations/s of a fixed loop (dict, str and
    integer work, like the engine's), the median of `rounds` (other processes slow it down too, as
    they slow the benchmarks)."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        table: dict[str, int] = {}
        total = 0
        for n in range(_PROBE_OPS):
            key = "k" + str(n % 997)
            table[key] = table.get(key, 0) + n
            total += n * 3 % 7
        times.append(time.perf_counter() - started)
    return round(_PROBE_OPS / statistics.median(times) / 1e6, 2)


def machine_now() -> dict[str, float]:
    """The CPU probe and the 1-minute load average, measured now."""
    return {"cpu_mops": cpu_probe(), "load_1m": round(os.getloadavg()[0], 1)}


def _machine_text(m: dict[str, float] | None) -> str:
    return f"{m['cpu_mops']} Mops/s, load {m['load_1m']}" if m else "–"


def _row(figure: str, value: Any, unit: str, target: str, met: bool | None, baseline: Any = None,
         ratio: Any = None) -> Row:  # fmt: skip
    return {"figure": figure, "value": value, "unit": unit, "baseline": baseline, "ratio": ratio,
            "target": target, "met": met}  # fmt: skip


def _engine(r: dict[str, Any]) -> list[Row]:
    eng, base, ratio = r["engine_events_per_s"], r["baseline_events_per_s"], r["ratio"]
    raw, raw_ratio = r["raw_pipe_events_per_s"], r["ratio_to_raw_pipe"]
    return [
        _row("end-to-end throughput (accepted, committed, relayed)", eng, "events/s", ">= 20,000",
             eng >= 20_000, f"{base} events/s (same rows, no logic)", ratio),
        _row("end-to-end / same-rows baseline (aiokafka + asyncpg writing the engine's rows)", ratio,
             "ratio", ">= 0.8 (issue 17)", ratio >= 0.8),
        _row("  end-to-end / raw pipe (one unindexed jsonb row per message)", raw_ratio, "ratio",
             "(info)", None, f"{raw} events/s (raw pipe)", raw_ratio),
        *([_row("  end-to-end / naive pipe (executemany, a keyed row per message, offsets to Kafka)",
                r["ratio_to_naive_pipe"], "ratio", "(info)", None,
                f"{r['naive_pipe_events_per_s']} events/s (naive pipe)", r["ratio_to_naive_pipe"])]
          if "ratio_to_naive_pipe" in r else []),
        *([_row("  end-to-end / I/O floor (the same rows, and the same outputs sent to Kafka by the engine's "
                "relay; no parsing, no logic)", r["ratio_to_io_floor"], "ratio", "(info)", None,
                f"{r['io_floor_events_per_s']} events/s (I/O floor; "
                f"{r['io_floor_events_per_s'] / r['baseline_events_per_s']:.3f} of same rows)",
                r["ratio_to_io_floor"])]
          if "ratio_to_io_floor" in r else []),
        *([_row("  CPU per event, whole machine (every process: the pipe, PostgreSQL, Kafka): "
                "engine / I/O floor / same rows",
                _cpu(r, "machine"), "µs", "(info)", None, f"this process: {_cpu(r, 'process')} µs")]
          if "cpu_us_per_event" in r else []),
    ]  # fmt: skip


def _cpu(r: dict[str, Any], where: str) -> str:
    return " / ".join(str(r["cpu_us_per_event"][pipe][where]) for pipe in ("engine", "io_floor", "same_rows"))


def _acks(r: dict[str, Any]) -> list[Row]:
    eng, naive, ratio = r["engine_acks_per_s"], r["naive_pipe_acks_per_s"], r["ratio_to_naive_pipe"]
    return [
        _row("acknowledgements after their critical reports / naive pipe", ratio, "ratio", ">= 0.5",
             ratio >= 0.5, f"{naive} acks/s (naive pipe)", ratio),
        _row("  CPU per acknowledgement: engine process + PostgreSQL",
             r["engine_process_cpu_us_per_ack"] + r["postgres_cpu_us_per_ack"], "µs", "(info)", None,
             f"{eng} acks/s engine"),
    ]  # fmt: skip


def _timers(r: dict[str, Any]) -> list[Row]:
    late, sent = r["lateness_ms"], r["delivered_lateness_ms"]
    text = f"p50 {late['p50']} / p99 {late['p99']} / max {late['max']}"
    most = r.get("engine_max_events_per_s")
    base = f"{most} events/s (the engine's maximum, same run; input at half)" if most else None
    return [
        _row(f"timer lateness, {r['armed_timers']:,} armed, {r['input_events_per_s']:,} events/s in "
             f"({r['firings_measured']:,} firings, window from {r['window_opened_s_into_stream']} s in)",
             text, "ms", "p99 <= 50 ms", late["p99"] <= 50, base),
        _row("  same, until relayed to Kafka", f"p50 {sent['p50']} / p99 {sent['p99']} / max {sent['max']}",
             "ms", "(info)", None),
    ]  # fmt: skip


def _restart(r: dict[str, Any]) -> list[Row]:
    value = r["restart_s"]
    return [
        _row(f"restart: SIGKILL to processing, {r['armed_timers']:,} timers re-armed", value, "s",
             "<= 10 s", value <= 10, f"{r['baseline_restart_s_without_timers']} s (no timers)", r["ratio"]),
    ]  # fmt: skip


def _memory(r: dict[str, Any]) -> list[Row]:
    per, full = r["bytes_per_open_incident"], r["bytes_per_open_incident_cache_full"]
    return [
        _row(f"engine memory per open incident with its timers ({r['open_incidents']:,} open)", per,
             "bytes", "<= 1 KB", per <= 1024, f"{r['baseline_rss_mib_empty']} MiB RSS empty engine"),
        _row(f"  same, incident cache full ({r['incident_cache_limit']:,} cached at "
             f"{r['bytes_per_cached_incident']} B)", full, "bytes", "<= 1 KB", full <= 1024),
    ]  # fmt: skip


def _simulate(r: dict[str, Any]) -> list[Row]:
    rate = r["simulate_events_per_s"]
    return [
        _row("`incidents simulate`", rate, "events/s", ">= 100,000", rate >= 100_000,
             f"{r['baseline_events_per_s']} events/s (read + parse only)", r["ratio"]),
    ]  # fmt: skip


def _replay(r: dict[str, Any]) -> list[Row]:
    out = []
    for key, label in (("full_replay", "replay (full, exact)"), ("what_if", "what-if replay (livepro-2)"),
                       ("report", "SLA report from the log")):  # fmt: skip
        rate = r.get(f"{key}_events_per_s")
        if rate is not None:
            base = r.get("baseline_events_per_s")
            out.append(_row(label, rate, "events/s", ">= 100,000", rate >= 100_000,
                            f"{base} events/s" if base else None,
                            round(rate / base, 3) if base else None))  # fmt: skip
    return out or [_row("replay", "no figures recognised in its output", "", ">= 100,000", None)]


def _notifier(r: dict[str, Any]) -> list[Row]:
    mine, base = r["notifier"], r["baseline"]
    return [
        _row("notifier: notifications/s (backlog, one webhook)", mine["notifications_per_s"], "/s", "–", None,
             f"{base['notifications_per_s']}/s (bare consumer + POST)", r["throughput_ratio"]),
        _row(f"notifier: p99 time → delivery at {r['rate_per_s']:g}/s", mine["p99_ms"], "ms", "–", None,
             f"{base['p99_ms']} ms", round(mine["p99_ms"] / base["p99_ms"], 3) if base["p99_ms"] else None),
    ]  # fmt: skip


BENCHES = (
    Bench("engine", "bench_engine.py", ("--events", "60000", "--runs", "3"),
          ("--events", "6000", "--runs", "1"),
          _engine),
    Bench("acks", "bench_engine.py", ("--workload", "ack-heavy", "--events", "100000", "--runs", "3"),
          ("--workload", "ack-heavy", "--events", "6000", "--runs", "1"),
          _acks),
    Bench("timers", "bench_timers.py", ("--timers", "1000000", "--duration", "60"),
          ("--timers", "50000", "--duration", "10", "--span", "300", "--saturate", "5000"), _timers),
    Bench("restart", "bench_restart.py", ("--timers", "1000000", "--runs", "3"),
          ("--timers", "20000", "--runs", "1"),
          _restart),
    Bench("memory", "bench_memory.py", ("--incidents", "1000000",), ("--incidents", "50000",), _memory),
    Bench("replay", "bench_replay.py", ("--events", "1000000", "--runs", "3"),
          ("--events", "20000", "--runs", "1"),
          _replay),
    Bench("simulate", "bench_simulate.py", ("--events", "1000000", "--repeat", "3"),
          ("--events", "20000", "--repeat", "1"), _simulate),
    Bench("notifier", "bench_notifier.py", ("--rate", "200", "--duration", "30", "--backlog", "10000"),
          ("--rate", "100", "--duration", "5", "--backlog", "1000"), _notifier),
)  # fmt: skip


def run(
    bench: Bench, quick: bool, out_dir: Path, env: dict[str, str]
) -> tuple[list[Row], str, dict[str, Any]]:
    """Run one benchmark; its table rows, the command that reproduces it, and its raw JSON."""
    args = bench.quick if quick else bench.full
    json_path = out_dir / f"{bench.name}.json"
    command = " ".join([".venv/bin/python", f"benchmarks/{bench.script}", *args])
    if not (HERE / bench.script).exists():
        return (
            [_row(bench.name, f"skipped: benchmarks/{bench.script} not present", "", "", None)],
            command,
            {},
        )
    json_path.unlink(missing_ok=True)
    log_path = out_dir / f"{bench.name}.log"
    machine = machine_now()
    print(f"== {bench.name}: {command}  (machine: {_machine_text(machine)})", flush=True)
    started = time.monotonic()
    with open(log_path, "wb") as log:
        done = subprocess.run(
            [sys.executable, str(HERE / bench.script), *args, "--json", str(json_path)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, check=False,
        )  # fmt: skip
    seconds = time.monotonic() - started
    print(f"   {'ok' if done.returncode == 0 else 'FAILED'} in {seconds:.0f}s (log: {log_path})", flush=True)
    if done.returncode != 0 or not json_path.exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        return (
            [_row(bench.name, f"failed (exit {done.returncode}): {tail[0][:120]}", "", "", False)],
            command,
            {},
        )
    raw = orjson.loads(json_path.read_bytes())
    try:
        rows = bench.rows(raw)
    except (KeyError, TypeError) as exc:
        rows = [_row(bench.name, f"unreadable figures ({exc!r}); see {json_path}", "", "", None)]
    return [{**r, "machine": machine} for r in rows], command, {**raw, "machine": machine}


def markdown(rows: list[Row], quick: bool, machine: dict[str, Any]) -> str:
    """The results table."""
    start, end = machine["start"], machine["end"]
    lines = [
        "# Benchmark results" + (" (quick sizes: not the targets' sizes)" if quick else ""),
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M %Z')} on {os.cpu_count()} CPUs by `make bench`.",
        "Each line's command reproduces its figure alone; baselines come from the same run.",
        f"Machine speed in this run (CPU probe: a fixed pure-Python loop, median of 5, in millions of "
        f"operations/s; and the 1-minute load average): {_machine_text(start)} at the start, "
        f"{_machine_text(end)} at the end. Each line's `machine` column was measured right before its "
        "benchmark: a lower probe or a higher load there means a slower host, not a slower engine.",
        "",
        "| figure | value | baseline | ratio | target | met? | machine | command |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        value = f"{r['value']:,}" if isinstance(r["value"], int) else str(r["value"])
        met = {True: "yes", False: "**no**", None: "–"}[r["met"]]
        unit = f" {r['unit']}" if r["unit"] else ""
        lines.append(
            f"| {r['figure']} | {value}{unit} | {r['baseline'] or '–'} | {r['ratio'] or '–'} | "
            f"{r['target'] or '–'} | {met} | {_machine_text(r.get('machine'))} | `{r['command']}` |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the pipeline")
    parser.add_argument(
        "--only", default="", help="comma-separated names: " + ",".join(b.name for b in BENCHES)
    )
    parser.add_argument("--out", type=Path, default=HERE, help="folder for results.json and results.md")
    args = parser.parse_args()
    only = {name for name in args.only.split(",") if name}
    if unknown := sorted(only - {b.name for b in BENCHES}):
        names = ",".join(b.name for b in BENCHES)
        parser.error(f"--only {','.join(unknown)}: no such benchmark (one of {names})")
    try:  # before the benchmarks run, not after
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {args.out}: cannot use it as the results folder ({exc.strerror})")
    out_dir = HERE / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    kafka, _ = start_kafka()
    postgres, _ = start_postgres()
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka.url, "DATABASE_URL": postgres.url,
           "OTEL_SDK_DISABLED": "true"}  # fmt: skip
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    machine: dict[str, Any] = {"start": machine_now()}
    try:
        for bench in BENCHES:
            if only and bench.name not in only:
                continue
            bench_rows, command, figures = run(bench, args.quick, out_dir, env)
            rows.extend({**r, "command": command} for r in bench_rows)
            raw[bench.name] = figures
    finally:
        kafka.stop()
        postgres.stop()
    machine["end"] = machine_now()
    results = {"quick": args.quick, "cpus": os.cpu_count(), "machine": machine, "rows": rows, "raw": raw}
    (args.out / "results.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    table = markdown(rows, args.quick, machine)
    (args.out / "results.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

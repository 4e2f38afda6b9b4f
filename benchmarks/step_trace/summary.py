"""Summarise a STEP_TRACE file (see sitecustomize.py): percentiles of each phase, and where the slow
decides spent their time.

    .venv/bin/python benchmarks/step_trace/summary.py /tmp/steps.log [--last SECONDS] [--slow MS]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench_common import percentile

KEYS = ("step", "fetch", "decide", "lookup", "finish", "events", "asked", "fired")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("file", type=Path)
    parser.add_argument("--last", type=float, default=None, help="only the last SECONDS of the trace")
    parser.add_argument("--slow", type=float, default=15.0, help="a decide longer than this (ms) is slow")
    args = parser.parse_args()
    if not args.file.is_file():
        parser.error(f"{args.file}: no such file (was STEP_TRACE set for the engine's process?)")
    rows = []
    for line in args.file.read_text().splitlines():
        moment, *fields = line.split()
        rows.append({"t": float(moment)} | {k: float(v) for k, v in (f.split("=") for f in fields)})
    if args.last is not None and rows:
        rows = [r for r in rows if r["t"] > rows[-1]["t"] - args.last]
    if not rows:
        parser.error(f"{args.file}: no steps in it")
    if any(key not in rows[0] for key in KEYS):
        parser.error(f"{args.file}: not a STEP_TRACE file (its lines lack {', '.join(KEYS)})")
    print(f"{len(rows)} steps, {sum(1 for r in rows if r['fired'])} with firings")
    for key in KEYS:
        values = [r[key] for r in rows]
        p50, p90, p99 = (percentile(values, q) for q in (0.5, 0.9, 0.99))
        print(f"{key:7} p50 {p50:7.1f}  p90 {p90:7.1f}  p99 {p99:7.1f}  max {max(values):7.1f}")
    slow = [r for r in rows if r["decide"] > args.slow]
    if slow:
        share = sum(r["lookup"] for r in slow) / sum(r["decide"] for r in slow)
        print(f"{len(slow)} decides over {args.slow:g} ms: {share:.0%} of their time awaiting the lookup")


if __name__ == "__main__":
    main()

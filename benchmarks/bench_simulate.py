"""Throughput of `incidents simulate`: generate a JSONL file of input events, run it, print events/s.

    .venv/bin/python benchmarks/bench_simulate.py [--events 1000000] [--seed 7] [--repeat 3]

The file holds `events / 4` incidents of every policy, severity and region, reported over four weeks
in time order (so timers fire all along), each acknowledged, investigated or updated and restored,
plus a few repeated ids and invalid transitions. Target: >= 100,000 events/s on one core.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.simulate import run_simulation, writer

START = datetime(2025, 3, 3, tzinfo=UTC)
SPAN = timedelta(days=28)
SOURCES = ("/channels/email", "/channels/phone/au", "/channels/phone/us", "/channels/phone/uk")


def incident_events(rng: random.Random, number: int, reported: datetime) -> list[tuple[datetime, dict]]:
    """The input events of one incident, as (time, CloudEvent) pairs: mostly within SLA, some late."""
    subject = f"INC-{number:07d}"
    severity = rng.choice(("critical", "high", "low"))
    data: dict = {"severity": severity, "region": rng.choice(("au", "us", "uk")), "summary": "login slow"}
    if number % 2:
        data["policy"] = "livepro-2"
    ack = timedelta(seconds=rng.randint(30, 40 * 60))  # a quarter of the acks come after a warning
    steps = [("incident.reported", timedelta(0), data)]
    steps.append((rng.choice(("incident.acknowledged", "incident.investigating")), ack, {}))
    if severity == "low":  # a progress update now and then, restored within days
        update = ack + timedelta(hours=rng.randint(1, 30))
        steps.append(("incident.updated", update, {"note": "still digging"}))
        restored = update + timedelta(hours=rng.randint(1, 40))
    elif rng.random() < 0.1:  # some fail over to the backup site first
        restored = ack + timedelta(minutes=rng.randint(5, 40))
        steps.append(("incident.failed_over", restored, {"site": "backup-dc"}))
        restored += timedelta(hours=2)
    else:
        steps.append(("incident.updated", ack + timedelta(minutes=5), {"note": "on it"}))
        restored = ack + timedelta(minutes=rng.randint(5, 600))
    steps.append(("incident.restored", restored, {}))
    out = []
    for step, (kind, offset, payload) in enumerate(steps):
        event = {
            "specversion": "1.0",
            "id": f"{subject}-{step}",
            "source": rng.choice(SOURCES),
            "type": kind,
            "subject": subject,
            "time": reported + offset,
            "data": payload or None,
        }
        out.append((reported + offset, event))
    return out


def generate(path: Path, events: int, seed: int) -> int:
    """Write about `events` input events in time order (with ~1% noise); return how many lines."""
    rng = random.Random(seed)
    incidents = events * 99 // 400  # 4 events each, and 1% noise
    stream: list[tuple[datetime, dict]] = []
    for number in range(incidents):
        reported = START + SPAN * (number / incidents)
        stream.extend(incident_events(rng, number, reported))
    stream.sort(key=lambda pair: pair[0])
    for _ in range(events - len(stream)):  # noise: repeats and invalid transitions
        when, event = stream[rng.randrange(len(stream))]
        stream.append((when, dict(event, id=event["id"] + "-again") if rng.random() < 0.5 else event))
    with path.open("wb") as out:
        for _, event in stream:
            out.write(orjson.dumps(event, option=orjson.OPT_UTC_Z) + b"\n")
    return len(stream)


def main() -> None:
    """Generate, run, report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out")
    parser.add_argument("--repeat", type=int, default=3, help="runs over the same file")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    source = args.out / f"simulate-{args.events}.jsonl"
    if not source.exists():
        started = time.perf_counter()
        lines = generate(source, args.events, args.seed)
        print(f"generated {lines:,} events in {time.perf_counter() - started:.1f}s -> {source}")
    domain = SlaDomain(PolicyRegistry.load())
    until = START + SPAN + timedelta(days=14)
    rates, baseline = [], []
    for run in range(1, args.repeat + 1):
        # Free the previous run's state first: `result = run_simulation(...)` frees it on assignment,
        # inside the timed span (its 250k incidents cost half a second to free, counted against
        # every run but the first).
        result = None
        baseline.append(raw_read(source))
        with source.open("rb") as lines_in, open(os.devnull, "wb") as sink:
            wall, cpu = time.perf_counter(), time.process_time()
            result = run_simulation(lines_in, until, domain, writer(sink))
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.append(result.events_read / wall)
        print(
            f"run {run}: {result.events_read:,} events, {len(result.incidents):,} incidents, "
            f"{result.outputs:,} outputs in {wall:.2f}s wall ({cpu:.2f}s cpu): {rates[-1]:,.0f} events/s"
        )
    print(
        f"throughput: best {max(rates):,.0f} events/s, median {statistics.median(rates):,.0f} events/s "
        "(one core; target 100,000)"
    )
    median, base = statistics.median(rates), statistics.median(baseline)
    figures = {
        "figure": "simulate throughput",
        "events": result.events_read,
        "runs": args.repeat,
        "simulate_events_per_s": round(median),
        "baseline_events_per_s": round(base),
        "baseline": "read and parse the same JSONL file (orjson), no logic",
        "ratio": round(median / base, 3),
        "targets": {"simulate_events_per_s": 100_000},
        "command": "python benchmarks/bench_simulate.py " + " ".join(sys.argv[1:]),
    }
    print(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))


def raw_read(source: Path) -> float:
    """Baseline: events/s of reading and parsing the file alone (what any consumer of it pays)."""
    started, count = time.perf_counter(), 0
    with source.open("rb") as lines_in:
        for line in lines_in:
            orjson.loads(line)
            count += 1
    return count / (time.perf_counter() - started)


if __name__ == "__main__":
    main()

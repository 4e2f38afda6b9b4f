"""What every fault case checks, from the event log and the output topics; engine processes; sizes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import asyncpg

from incident_contracts.constants import REJECTION_REASONS
from incident_engine.config import Settings
from tests.integration.engine_helpers import ago, engine_process, event, wait_ready

SCALE = os.environ.get("FAULTS_SCALE", "small")  # `make faults` sets "full"
REASONS = set(REJECTION_REASONS)  # the contract's, `unprocessable` included


def sized(small: int, full: int) -> int:
    """A size knob: small in `make test`, full in `make faults`."""
    return full if SCALE == "full" else small


def script(prefix: str, incidents: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Critical incidents of two kinds, so that a check sees missing breaches and false ones alike:
    even ones reported an hour ago (ack and restore breaches and the failover order all overdue on
    arrival), every other one of them acknowledged now; odd ones reported two minutes ago and
    acknowledged a minute later, in time (no breach may come). All restored in the second wave."""
    first, second = [], []
    for i in range(incidents):
        incident = f"{prefix}{i:05d}"
        region = random.choice(["au", "us", "uk"])
        if i % 2 == 0:
            first.append(event("reported", incident, ago(hours=1), severity="critical", region=region))
            if i % 4 == 0:
                first.append(event("acknowledged", incident))
        else:
            first.append(event("reported", incident, ago(minutes=2), severity="critical", region=region))
            first.append(event("acknowledged", incident, ago(minutes=1)))
        second.append(event("restored", incident))
    return first, second


def overdue(incidents: int) -> int:
    """How many incidents of `script` breach (and order a failover)."""
    return (incidents + 1) // 2


def expected_breaches(prefix: str, incidents: int) -> set[tuple[str, str, str]]:
    """(subject, type, clock) of every breach and failover order the script makes due: those of the
    incidents reported an hour ago, none of those handled in time."""
    return {
        (f"{prefix}{i:05d}", kind, clock)
        for i in range(0, incidents, 2)
        for kind, clock in (("incident.sla.breached", "ack"), ("incident.sla.breached", "restore"),
                            ("incident.failover.required", ""))
    }  # fmt: skip


async def logged(dsn: str, prefix: str) -> list[asyncpg.Record]:
    """The event log rows of the incidents of one case."""
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(
            "SELECT incident_id, seq, event_id FROM event_log WHERE incident_id LIKE $1"
            " ORDER BY incident_id, seq",
            prefix + "%",
        )
    finally:
        await conn.close()


async def check_log(dsn: str, prefix: str, accepted: list[dict[str, Any]]) -> None:
    """No accepted event lost, none applied twice, each incident's history gapless."""
    rows = await logged(dsn, prefix)
    ids = [r["event_id"] for r in rows]
    assert len(ids) == len(set(ids)), "an event applied twice"
    missing = {e["id"] for e in accepted} - set(ids)
    assert not missing, f"{len(missing)} accepted events lost, e.g. {sorted(missing)[:3]}"
    assert len(ids) == len(accepted), f"{len(ids)} logged, {len(accepted)} expected"
    seqs: dict[str, list[int]] = defaultdict(list)
    for r in rows:
        seqs[r["incident_id"]].append(r["seq"])
    gaps = [i for i, s in seqs.items() if s != list(range(1, len(s) + 1))]
    assert not gaps, f"histories with gaps or repeats: {gaps[:3]}"


def check_outputs(outputs: list[dict[str, Any]], *, strict: bool = False) -> int:
    """Every output id stands for one output; returns how many copies were re-sent after a crash.

    A relay killed between Kafka's ack and deleting its outbox row sends the row again with the same
    ids (consumers drop them by id); `strict` (no crash in the case) allows no re-send at all.
    """
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for out in outputs:
        by_id[out["id"]].append(out)
    resent = 0
    for output_id, copies in by_id.items():
        first = copies[0]
        for other in copies[1:]:
            assert (other["type"], other["subject"], other["data"]) == (first["type"], first["subject"],
                    first["data"]), f"output id {output_id} used for different outputs"  # fmt: skip
        resent += len(copies) - 1
    assert not (strict and resent), f"{resent} output ids duplicated without any crash"
    logical: dict[tuple[Any, ...], set[str]] = defaultdict(set)
    for out in outputs:
        data = out["data"]
        key = (out["type"], out["subject"], data.get("clock"), data.get("threshold"), data.get("cause"),
               data.get("due_at") if out["type"] != "incident.rejected" else out["id"])  # fmt: skip
        logical[key].add(out["id"])
    doubled = {k: v for k, v in logical.items() if len(v) > 1}
    assert not doubled, f"one output emitted under several ids: {list(doubled.items())[:3]}"
    return resent


def check_breaches(outputs: list[dict[str, Any]], expected: set[tuple[str, str, str]]) -> None:
    """Every due breach and failover order emitted, each under one id, and no other: a false or
    premature breach (of an incident handled in time) fails the check as a missing one does."""
    ids: dict[tuple[str, str, str], set[str]] = defaultdict(set)
    for out in outputs:
        if out["type"] in ("incident.sla.breached", "incident.failover.required"):
            ids[(out["subject"], out["type"], out["data"].get("clock", ""))].add(out["id"])
    missing = expected - set(ids)
    assert not missing, f"{len(missing)} due breaches never emitted, e.g. {sorted(missing)[:3]}"
    false = set(ids) - expected
    assert not false, f"{len(false)} breaches that were not due, e.g. {sorted(false)[:3]}"
    assert all(len(v) == 1 for v in ids.values())
    retracted = [o for o in outputs if o["type"] == "incident.sla.retracted"]
    assert not retracted, f"{len(retracted)} retractions: breaches were sent before their evidence was read"


def check_transitions(outputs: list[dict[str, Any]], accepted: list[dict[str, Any]]) -> None:
    """Each accepted state-changing event produced its transition once."""
    causes: dict[str, set[str]] = defaultdict(set)
    for out in outputs:
        if out["type"] == "incident.state.changed":
            causes[out["data"]["cause"]].add(out["id"])
    changing = {e["id"] for e in accepted if e["type"] != "incident.updated"}
    assert changing <= set(causes), f"missing transitions: {sorted(changing - set(causes))[:3]}"
    assert all(len(v) == 1 for v in causes.values())


class Engines:
    """`incidents serve` child processes of one case: start, SIGKILL, stop them all at the end."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.procs: list[tuple[subprocess.Popen[bytes], int]] = []

    async def start(self, count: int = 1) -> None:
        """Start `count` more engines and wait until each is ready."""
        new = [
            engine_process(self.settings, self.logs / f"engine-{len(self.procs) + i}.log")
            for i in range(count)
        ]
        self.procs.extend(new)
        for proc, port in new:
            await wait_ready(port, proc, timeout=120)

    def kill(self, index: int = 0) -> None:
        """SIGKILL one engine: mid-batch, mid-relay, whatever it was doing."""
        proc, _ = self.procs.pop(index)
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_all(self) -> None:
        """Kill what is left (the checks read Postgres and Kafka, not the engines)."""
        while self.procs:
            self.kill()

    @property
    def ports(self) -> list[int]:
        """HTTP ports of the live engines."""
        return [port for _, port in self.procs]

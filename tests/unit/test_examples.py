"""The scenarios in `examples/` and the README's `simulate` commands: run verbatim, outputs as described."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from incident_engine.cli import app

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _simulate(*args: str) -> list[tuple[str, ...]]:
    result = CliRunner().invoke(app, ["simulate", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    outputs = []
    for line in result.stdout.splitlines():
        event = json.loads(line)
        data, kind = event["data"], event["type"].removeprefix("incident.")
        detail = {
            "state.changed": ("to",), "sla.warning": ("clock", "threshold"), "sla.breached": ("clock",),
            "rejected": ("reason",),
        }.get(kind, ())  # fmt: skip
        outputs.append((event["time"][11:16], kind, *(str(data[key]) for key in detail)))
    return outputs


EXPECTED = {
    "critical-restored-in-time.jsonl": [
        ("10:00", "state.changed", "reported"),
        ("10:05", "state.changed", "acknowledged"),
        ("10:06", "rejected", "duplicate"),  # the US phone line acknowledges too
        ("10:08", "state.changed", "investigating"),
        ("10:15", "sla.warning", "restore", "0.5"),
        ("10:20", "state.changed", "restored"),  # no breach, no failover order
    ],
    "critical-ack-breach-failover.jsonl": [
        ("22:40", "state.changed", "reported"),
        ("22:47", "sla.warning", "ack", "0.5"),
        ("22:52", "sla.warning", "ack", "0.8"),
        ("22:55", "sla.breached", "ack"),
        ("22:55", "sla.warning", "restore", "0.5"),
        ("22:58", "state.changed", "acknowledged"),
        ("23:04", "sla.warning", "restore", "0.8"),
        ("23:10", "sla.breached", "restore"),
        ("23:10", "failover.required"),
        ("23:16", "state.changed", "failed_over"),
        ("01:30", "state.changed", "restored"),
    ],
    # Reported Thursday 19:50 in London; Good Friday, the weekend and Easter Monday stop the clocks
    "high-over-easter-weekend.jsonl": [
        ("18:50", "state.changed", "reported"),
        ("07:05", "sla.warning", "ack", "0.5"),  # Tuesday 08:05 London: 15 business minutes
        ("07:10", "state.changed", "acknowledged"),
        ("12:50", "sla.warning", "resolution", "0.5"),
        ("14:00", "state.changed", "restored"),
    ],
    "low-update-overdue.jsonl": [
        ("14:00", "state.changed", "reported"),
        ("14:15", "sla.warning", "ack", "0.5"),
        ("14:20", "state.changed", "acknowledged"),
        ("20:20", "sla.warning", "update", "0.5"),
        ("23:56", "sla.warning", "update", "0.8"),
        ("19:30", "sla.warning", "update", "0.5"),
        ("23:06", "sla.warning", "update", "0.8"),
        ("12:30", "sla.breached", "update"),  # Monday 08:30 in New York, after the DST change
        ("15:00", "state.changed", "restored"),
        ("15:30", "rejected", "invalid_transition"),
    ],
}


def test_every_example_is_described_and_gives_what_it_says() -> None:
    assert {p.name for p in EXAMPLES.glob("*.jsonl")} == set(EXPECTED)
    for name, expected in EXPECTED.items():
        assert _simulate(str(EXAMPLES / name), "--until", "2026-05-01", "--strict") == expected, name


def test_the_readme_simulate_commands_run_verbatim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    pattern = re.compile(r"^(?:\.venv/bin/)?incidents (simulate examples/\S+\.jsonl[^#|\n]*)", re.M)
    commands = []
    for readme in (ROOT / "README.md", EXAMPLES / "README.md"):
        found = pattern.findall(readme.read_text())
        assert len(found) >= 2, (readme, found)
        commands += found
    for command in commands:
        args = shlex.split(command)[1:]
        assert Path(args[0]).name in EXPECTED, command
        assert _simulate(*args), command

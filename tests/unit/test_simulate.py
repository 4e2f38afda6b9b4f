"""`incidents simulate`: JSONL in, JSONL out, virtual clock, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import typer
from typer.testing import CliRunner

from incident_engine.simulate import simulate_command
from tests.unit.sla_helpers import local, wire

pytestmark = pytest.mark.unit

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
app = typer.Typer()
app.command()(simulate_command)


def run(tmp_path: Path, lines: list[bytes], *args: str) -> tuple[int, list[dict], str]:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = CliRunner().invoke(app, [str(path), *args])
    outputs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return result.exit_code, outputs, result.stderr


def test_prints_outputs_as_json_lines_in_emission_order(tmp_path: Path) -> None:
    start = local("au", "2025-06-11 10:00")
    lines = [
        wire("reported", start, subject="A", severity="critical", region="au", summary="s"),
        wire("reported", start, subject="B", severity="low", region="au", summary="s", policy="livepro-2"),
        b"",
        wire("acknowledged", local("au", "2025-06-11 10:20"), subject="B"),
        wire("restored", local("au", "2025-06-11 10:40"), subject="A"),
    ]
    code, outputs, _ = run(tmp_path, lines, "--until", "2025-06-12T00:00:00Z")
    assert code == 0
    times = [o["time"] for o in outputs]
    assert times == sorted(times) and all(t.endswith("Z") for t in times)
    assert ("incident.failover.required", "A") in [(o["type"], o["subject"]) for o in outputs]
    assert outputs[-1]["type"] == "incident.sla.warning" and outputs[-1]["data"]["clock"] == "update"
    for output in outputs:
        schema = json.loads((SCHEMAS / f"{output['type']}.schema.json").read_text())
        jsonschema.validate(output, schema)


def test_policy_option_sets_the_default(tmp_path: Path) -> None:
    line = wire("reported", "2025-06-11T02:00:00Z", severity="high", region="au", summary="s")
    code, outputs, _ = run(tmp_path, [line], "--until", "2025-06-11T02:10:00Z", "--policy", "livepro-2")
    assert code == 0 and outputs[0]["data"]["policy"] == "livepro-2"


def test_bad_event_is_a_rejection_not_a_crash(tmp_path: Path) -> None:
    bad = wire("reported", "2025-06-11T02:00:00Z", severity="urgent", region="au", summary="s")
    code, outputs, _ = run(tmp_path, [bad], "--until", "2025-06-11T03:00:00Z")
    assert code == 0
    [rejection] = outputs
    assert rejection["type"] == "incident.rejected" and rejection["data"]["reason"] == "schema"
    assert "data.severity" in rejection["data"]["detail"] and rejection["subject"] == "INC-1"


def test_malformed_file_names_the_line(tmp_path: Path) -> None:
    good = wire("reported", "2025-06-11T02:00:00Z", severity="high", region="au", summary="s")
    code, _, stderr = run(tmp_path, [good, b"", b'{"oops": '], "--until", "2025-06-11T03:00:00Z")
    assert code == 1
    assert "events.jsonl:3: malformed input: not JSON" in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until", "tomorrow"], "Invalid isoformat string"),
        (["--until", "2025-06-11T03:00:00"], "has no UTC offset"),
        (["--until", "2025-06-11T03:00:00Z", "--policy", "nope"], "unknown policy 'nope'"),
    ],
)
def test_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    code, _, stderr = run(tmp_path, [b""], *args)
    assert code == 2 and message in stderr


def test_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [str(tmp_path / "none.jsonl"), "--until", "2025-06-11T03:00:00Z"])
    assert result.exit_code == 2 and "cannot read" in result.stderr


def test_registered_in_the_incidents_command() -> None:
    from incident_engine.cli import app as incidents

    names = {c.name for c in incidents.registered_commands} | {g.name for g in incidents.registered_groups}
    assert {"simulate", "schemas"} <= names

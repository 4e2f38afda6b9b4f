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


def test_the_engine_s_policy_variables_are_read_as_the_engine_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Custom policies in INCIDENTS_POLICY_DIR: simulate must use them, as `serve` does, or its
    outputs silently differ from the engine's."""
    import shutil

    from incident_engine.domain.policy import POLICY_DIR

    folder = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, folder)
    text = (folder / "livepro-2.yaml").read_text()
    (folder / "house-rules.yaml").write_text(text.replace("livepro-2", "house-rules"))
    line = wire("reported", "2025-06-11T02:00:00Z", severity="high", region="au", summary="s")
    monkeypatch.setenv("INCIDENTS_POLICY_DIR", str(folder))
    monkeypatch.setenv("INCIDENTS_DEFAULT_POLICY", "house-rules")
    code, outputs, err = run(tmp_path, [line], "--until", "2025-06-11T02:10:00Z")
    assert code == 0, err
    assert outputs[0]["data"]["policy"] == "house-rules"
    (folder / "livepro-1.yaml").write_text("severities: [")  # a broken file there is refused
    code, _, err = run(tmp_path, [line], "--until", "2025-06-11T02:10:00Z")
    assert code == 2 and "livepro-1.yaml" in err


def test_bad_event_is_a_rejection_not_a_crash(tmp_path: Path) -> None:
    bad = wire("reported", "2025-06-11T02:00:00Z", severity="urgent", region="au", summary="s")
    code, outputs, _ = run(tmp_path, [bad], "--until", "2025-06-11T03:00:00Z")
    assert code == 0
    [rejection] = outputs
    assert rejection["type"] == "incident.rejected" and rejection["data"]["reason"] == "schema"
    assert "data.severity" in rejection["data"]["detail"] and rejection["subject"] == "INC-1"


def test_a_line_that_is_not_json_is_a_decode_rejection_naming_the_line(tmp_path: Path) -> None:
    good = wire("reported", "2025-06-11T02:00:00Z", severity="high", region="au", summary="s")
    ack = wire("acknowledged", "2025-06-11T02:05:00Z")
    code, outputs, stderr = run(tmp_path, [good, b"", b'{"oops": ', ack], "--until", "2025-06-11T03:00:00Z")
    assert code == 0, stderr  # the run goes on: the acknowledgement after the bad line is applied
    [rejection] = [o for o in outputs if o["type"] == "incident.rejected"]
    assert rejection["data"]["reason"] == "decode" and rejection["data"]["original"] == '{"oops": '
    assert rejection["data"]["detail"].startswith("line 3: not JSON")
    assert [o["data"]["to"] for o in outputs if o["type"] == "incident.state.changed"] == [
        "reported", "acknowledged",
    ]  # fmt: skip
    assert "events.jsonl: 1 line(s) not valid input events" in stderr and ": 3 (--strict" in stderr


def test_two_identical_bad_lines_are_two_rejections(tmp_path: Path) -> None:
    code, outputs, _ = run(tmp_path, [b"not json", b"not json"], "--until", "2025-06-11T03:00:00Z")
    assert code == 0
    assert [o["data"]["detail"][:7] for o in outputs] == ["line 1:", "line 2:"]
    assert outputs[0]["id"] != outputs[1]["id"]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (b'{"oops": ', "events.jsonl:2: decode: not JSON"),
        (wire("reported", "2025-06-11T02:00:00Z", severity="urgent", region="au", summary="s"),
         "events.jsonl:2: schema: data.severity"),
    ],
)  # fmt: skip
def test_strict_stops_at_the_first_bad_line_with_one_line_naming_it(
    tmp_path: Path, bad: bytes, message: str
) -> None:
    good = wire("reported", "2025-06-11T02:00:00Z", severity="high", region="au", summary="s")
    code, _, stderr = run(tmp_path, [good, bad, good], "--until", "2025-06-11T03:00:00Z", "--strict")
    assert code == 1
    assert stderr.startswith("error: ") and message in stderr and len(stderr.strip().splitlines()) == 1
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--until", "tomorrow"], "'tomorrow' is not a date or time; use e.g. 2025-03-04 (midnight UTC)"),
        (["--until", "2025-06-11T03:00:00Z", "--policy", "nope"], "unknown policy 'nope'"),
    ],
)
def test_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    code, _, stderr = run(tmp_path, [b""], *args)
    assert code == 2 and message in stderr


def test_until_takes_the_forms_of_every_command(tmp_path: Path) -> None:
    """A bare date is midnight UTC, a time without offset is UTC, as in report, replay and db archive."""
    line = wire("reported", "2025-06-10T23:40:00Z", severity="critical", region="au", summary="s")
    by_form = {}
    for until in ("2025-06-11", "2025-06-11T00:00:00", "2025-06-11T00:00:00Z", "2025-06-11T10:00+10:00"):
        code, outputs, stderr = run(tmp_path, [line], "--until", until)
        assert code == 0, stderr
        by_form[until] = [o["id"] for o in outputs]
    assert len({tuple(ids) for ids in by_form.values()}) == 1
    # 20 minutes in at midnight: the ack clock (15 min) has breached, the restore one (30 min) not
    code, outputs, _ = run(tmp_path, [line], "--until", "2025-06-11")
    assert ("incident.sla.breached", "ack") in [(o["type"], o["data"].get("clock")) for o in outputs]
    assert "incident.failover.required" not in [o["type"] for o in outputs]


def test_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [str(tmp_path / "none.jsonl"), "--until", "2025-06-11T03:00:00Z"])
    assert result.exit_code == 2 and "cannot read" in result.stderr


def test_registered_in_the_incidents_command() -> None:
    from incident_engine.cli import app as incidents

    names = {c.name for c in incidents.registered_commands} | {g.name for g in incidents.registered_groups}
    assert {"simulate", "schemas"} <= names

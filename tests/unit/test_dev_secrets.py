"""The intake's local secrets are this checkout's: generated once into the dev folder (mode 0600),
the same on every `make run`, deleted by `incidents dev reset`."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from devstack.devhome import example_secret_names, intake_secrets

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
NAMES = ["INTAKE_ALERTMANAGER_TOKEN", "INTAKE_GRAFANA_HMAC_SECRET", "INTAKE_PAGERDUTY_ROUTING_KEY"]


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEVSTACK_HOME": str(home)}
    command = [sys.executable, "-m", "incident_engine.cli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_the_names_are_those_the_example_integrations_read() -> None:
    assert example_secret_names() == NAMES


def test_secrets_are_created_once_private_and_kept(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path, first = intake_secrets(home)
    assert path == home / "intake-secrets.env" and sorted(first) == NAMES
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(set(first.values())) == 3 and all(len(v) >= 32 for v in first.values())
    assert intake_secrets(home) == (path, first)  # reused, not rotated
    path.write_text(f"export INTAKE_ALERTMANAGER_TOKEN={first['INTAKE_ALERTMANAGER_TOKEN']}\n")
    _, again = intake_secrets(home)  # a name the file lacks gets one; the others stay
    assert again["INTAKE_ALERTMANAGER_TOKEN"] == first["INTAKE_ALERTMANAGER_TOKEN"]
    assert (
        sorted(again) == NAMES and again["INTAKE_GRAFANA_HMAC_SECRET"] != first["INTAKE_GRAFANA_HMAC_SECRET"]
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_dev_secrets_prints_the_same_exports_until_a_reset(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = cli("dev", "secrets", home=home)
    assert first.returncode == 0, first.stderr
    exports = [line for line in first.stdout.splitlines() if line.startswith("export ")]
    assert [line.split("=")[0] for line in exports] == [f"export {name}" for name in NAMES]
    assert cli("dev", "secrets", home=home).stdout == first.stdout
    reset = cli("dev", "reset", "--yes", home=home)
    assert reset.returncode == 0, reset.stderr
    assert not (home / "intake-secrets.env").exists()
    assert cli("dev", "secrets", home=home).stdout != first.stdout  # new ones after a reset


def test_make_runs_intake_gets_the_same_secrets_on_every_run(tmp_path: Path) -> None:
    """deploy/local/start-intake.sh as with-services.sh sources it, `incidents intake` replaced by a
    stub that records the environment it was given."""
    checkout = tmp_path / "checkout"
    (checkout / "deploy/local").mkdir(parents=True)
    shutil.copy(REPO / "deploy/local/start-intake.sh", checkout / "deploy/local/start-intake.sh")
    (checkout / ".venv/bin").mkdir(parents=True)
    stub = checkout / ".venv/bin/incidents"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = intake ]; then env | grep ^INTAKE_ | sort > intake-env.txt; exit 0; fi\n'
        f'exec {sys.executable} -m incident_engine.cli "$@"\n'
    )
    stub.chmod(0o755)
    home = tmp_path / "home"

    def run(**extra: str) -> tuple[dict[str, str], str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("INTAKE_")}
        env.update(DEVSTACK_HOME=str(home), **extra)
        script = "set -euo pipefail; . deploy/local/start-intake.sh; wait $intake_pid"
        done = subprocess.run(
            ["bash", "-c", script], cwd=checkout, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        seen = dict(line.split("=", 1) for line in (checkout / "intake-env.txt").read_text().splitlines())
        return seen, done.stderr

    first, said = run()
    assert all(first[name] for name in NAMES)
    assert f"{home}/intake-secrets.env" in said and "the same on every run" in said
    assert first["INTAKE_PAGERDUTY_ROUTING_KEY"] in said  # the printed curl line works after a restart
    second, _ = run()
    assert {n: second[n] for n in NAMES} == {n: first[n] for n in NAMES}
    chosen, _ = run(INTAKE_ALERTMANAGER_TOKEN="chosen-token")  # a variable set beforehand wins
    assert chosen["INTAKE_ALERTMANAGER_TOKEN"] == "chosen-token"
    assert chosen["INTAKE_GRAFANA_HMAC_SECRET"] == first["INTAKE_GRAFANA_HMAC_SECRET"]

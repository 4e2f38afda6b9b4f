"""The shipped local config files pass their own checks with what the README says to set: each
variable they read is named next to them, and the README's copy-paste lines run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
CLI = f"{shlex.quote(sys.executable)} -m incident_engine.cli"


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    return README[start : README.index("\n## ", start + 1)]


def sh_block(text: str, containing: str) -> str:
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if containing in b]
    return block


def notifier_variables() -> list[str]:
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if set(node) == {"env"}:
                found.append(str(node["env"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load((REPO / "deploy/local/notifier.yaml").read_text()))
    return found


def intake_variables() -> list[str]:
    from devstack.devhome import example_secret_names

    return example_secret_names(REPO / "deploy/local/integrations.yaml")


def run(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`script` in bash -e from the checkout, as a newcomer pastes it (fresh dev folder, none of the
    examples' variables set)."""
    names = {*notifier_variables(), *intake_variables(), "INCIDENTS_NOTIFIER_ALLOW_PRIVATE"}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env["DEVSTACK_HOME"] = str(tmp_path / "dev")
    script = script.replace(".venv/bin/incidents", CLI)
    return subprocess.run(
        ["bash", "-ec", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_examples_read_the_variables_the_readme_names() -> None:
    assert notifier_variables() == [
        "SLACK_TEAM_WEBHOOK_URL",
        "PAGERDUTY_ROUTING_KEY",
        "FAILOVER_WEBHOOK_SECRET",
    ]
    notifications = section("Notifications")
    for name in notifier_variables():
        assert f"`{name}`" in notifications and f"export {name}=" in notifications
    assert intake_variables() == [
        "INTAKE_ALERTMANAGER_TOKEN",
        "INTAKE_GRAFANA_HMAC_SECRET",
        "INTAKE_PAGERDUTY_ROUTING_KEY",
    ]
    monitors = section("Intake: monitors")
    for name in intake_variables():
        assert f"`{name}`" in monitors


def test_the_readmes_notifier_check_passes_as_written(tmp_path: Path) -> None:
    block = sh_block(section("Notifications"), "notify --check --config deploy/local/notifier.yaml")
    lines = [line for line in block.splitlines() if "notify --config" not in line]  # not the long-running one
    done = run("\n".join(lines), tmp_path)
    assert done.returncode == 0, done.stderr
    assert "deploy/local/notifier.yaml: 4 destination(s), 5 route(s), secrets readable" in done.stdout
    alone = run(f"{CLI} notify --check --config deploy/local/notifier.yaml", tmp_path)
    assert alone.returncode == 2  # nothing set: every missing variable named, with how to set it
    for name in notifier_variables():
        assert f"environment variable {name} " in alone.stderr
    assert "whsec_$(head -c 24 /dev/urandom | base64)" in alone.stderr


def test_the_readmes_intake_check_passes_as_written(tmp_path: Path) -> None:
    block = sh_block(section("Intake: monitors"), "intake check deploy/local/integrations.yaml")
    done = run(block, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(" at /v") == 3
    assert (tmp_path / "dev" / "intake-secrets.env").exists()
    alone = run(f"{CLI} intake check deploy/local/integrations.yaml", tmp_path)
    assert alone.returncode == 2  # nothing set: all three named at once
    for name in intake_variables():
        assert f"environment variable {name} is not set: set it to" in alone.stderr

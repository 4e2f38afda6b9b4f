"""Fixtures of the intake's integration tests: the real Alertmanager, the intake and engine as processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.process import REPO_ROOT

ALERTMANAGER_SCRIPT = REPO_ROOT / "deploy" / "local" / "alertmanager.sh"


@pytest.fixture(scope="session")
def alertmanager_binary() -> Iterator[Path]:
    """The real Prometheus Alertmanager, built once from its Go module and cached under .cache/."""
    done = subprocess.run([str(ALERTMANAGER_SCRIPT)], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise AssertionError(f"deploy/local/alertmanager.sh failed:\n{done.stderr[-3000:]}")
    yield Path(done.stdout.strip().splitlines()[-1])

"""`benchmarks/run_all.py` refuses a bad command line at once, before any benchmark runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
RUN_ALL = Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py"


def run_all(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(RUN_ALL), *args], capture_output=True, text=True, timeout=60)


def test_an_unknown_benchmark_name_is_refused_with_the_known_ones() -> None:
    done = run_all("--only", "timers,nope")
    assert done.returncode == 2
    assert "--only nope: no such benchmark (one of engine,acks,timers," in done.stderr
    assert "Traceback" not in done.stderr


def test_a_results_folder_that_cannot_be_made_is_refused_before_anything_runs(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = run_all("--only", "simulate", "--out", str(blocker / "results"))
    assert done.returncode == 2
    assert f"--out {blocker / 'results'}: cannot use it as the results folder" in done.stderr
    assert "Traceback" not in done.stderr and "devstack" not in done.stderr  # no service started

"""`incidents serve` (or another subcommand) as a child process, for tests and benchmarks that kill it
for real."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack.process import free_port


def spawn_engine(
    kafka: str, dsn: str, group: str, log_file: Path, **extra_env: str
) -> tuple[subprocess.Popen[bytes], int]:
    """Start an engine replica on a free loopback port (telemetry off); return it and its HTTP port."""
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "DATABASE_URL": dsn,
        "INCIDENTS_CONSUMER_GROUP": group,
        "INCIDENTS_HTTP_PORT": str(port),
        "INCIDENTS_HTTP_HOST": "127.0.0.1",
        "OTEL_SDK_DISABLED": "true",
        **extra_env,
    }
    return spawn_cli(["serve"], env, log_file), port


def spawn_cli(args: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    """`incidents ARGS...` as a child process of this interpreter, its output appended to `log_file`
    (the engine, the intake, the notifier: tests that kill them for real)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "incident_engine.cli", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

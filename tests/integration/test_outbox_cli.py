"""`incidents outbox parked|resend`: an unreachable PostgreSQL or Kafka is one line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from devstack.stack import Service, fresh_database

pytestmark = pytest.mark.integration


def incidents(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "incident_engine.cli", *args]
    return subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [["outbox", "parked"], ["outbox", "resend"]])
def test_postgres_unreachable_is_one_line_naming_it(command: list[str]) -> None:
    run = incidents(*command, DATABASE_URL="postgresql://bob:secret@127.0.0.1:1/none")
    assert run.returncode == 2
    assert "Traceback" not in run.stdout + run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith(
        "error: cannot reach PostgreSQL at 127.0.0.1:1 (postgresql://127.0.0.1:1/none, from DATABASE_URL)"
    )
    assert "secret" not in line  # credentials are never printed


async def test_kafka_unreachable_on_resend_is_one_line_naming_it(postgres: Service) -> None:
    dsn = await fresh_database(postgres.url)
    assert incidents("db", "migrate", DATABASE_URL=dsn).returncode == 0
    assert incidents("outbox", "parked", DATABASE_URL=dsn).stdout.strip() == "no parked outputs"
    run = incidents("outbox", "resend", DATABASE_URL=dsn, KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach Kafka at 127.0.0.1:1 (KAFKA_BOOTSTRAP_SERVERS)")

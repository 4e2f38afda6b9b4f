"""Everyday use from the command line, against a real engine, Kafka and PostgreSQL: `incidents tail`,
`publish --wait`, the engine's log lines (one JSON format, breaches and dead letters said), and one
clear line instead of a traceback when something is down or broken."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from devstack.engine import spawn_engine
from devstack.stack import Service, fresh_database
from incident_engine.domain.policy import POLICY_DIR
from tests.integration.engine_helpers import wait_ready

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "incident_engine.cli"]
DOWN_DSN = "postgresql://bob:s3cret@127.0.0.1:1/none"  # nothing listens on port 1
DOWN_KAFKA = "127.0.0.1:1"


def incidents(*args: str, timeout: float = 90, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user does (a subprocess; stdout is not a terminal)."""
    return subprocess.run([*CLI, *args], env={**os.environ, "OTEL_SDK_DISABLED": "true", **env},
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def in_process(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI in this process (typer's runner: no interpreter start-up), as a CompletedProcess."""
    from typer.testing import CliRunner

    from incident_engine.cli import app

    result = CliRunner().invoke(app, list(args), env=env)
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def assert_one_clear_error(run: subprocess.CompletedProcess[str], *said: str, code: int = 2) -> str:
    """A non-zero exit with one or two lines saying `said`, no traceback, no credentials."""
    both = run.stdout + run.stderr
    assert run.returncode == code, both
    assert "Traceback" not in both and "Unclosed" not in both and "s3cret" not in both, both
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, run.stderr
    for text in said:
        assert text in run.stderr, run.stderr
    return run.stderr


@dataclass
class Engine:
    kafka: str
    dsn: str
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
async def engine(
    kafka: Service, postgres: Service, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Engine]:
    """One engine (`incidents serve` as a child process) shared by the tests of this file."""
    dsn = await fresh_database(postgres.url)
    log = tmp_path_factory.mktemp("everyday") / "engine.log"
    group = f"everyday-{uuid.uuid4().hex[:8]}"
    proc, port = spawn_engine(kafka.url, dsn, group, log, INCIDENTS_BREACH_GRACE_MS="0")
    try:
        await wait_ready(port, proc)
        yield Engine(kafka.url, dsn, {"KAFKA_BOOTSTRAP_SERVERS": kafka.url, "DATABASE_URL": dsn}, log, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(incidents, *args, **env)


async def test_publish_wait_prints_the_verdict_and_exits_by_it(engine: Engine) -> None:
    incident = f"WAIT-{uuid.uuid4().hex[:6]}"
    reported = await run_cli(
        "publish",
        "reported",
        "--incident",
        incident,
        "--severity",
        "low",
        "--region",
        "uk",
        "--wait",
        **engine.env,
    )
    assert reported.returncode == 0, reported.stderr
    assert f"accepted: {incident} (new) -> reported" in reported.stderr
    assert orjson.loads(reported.stdout)["subject"] == incident  # the event itself, on stdout, as before

    ghost = await run_cli("publish", "acknowledged", "--incident", "DOES-NOT-EXIST", "--wait", **engine.env)
    assert ghost.returncode == 3, ghost.stderr
    assert "rejected (unknown_incident): no incident 'DOES-NOT-EXIST' has been reported" in ghost.stderr
    assert "Traceback" not in ghost.stderr

    ack = await run_cli("publish", "acknowledged", "--incident", incident, "--wait", **engine.env)
    assert ack.returncode == 0 and f"accepted: {incident} reported -> acknowledged" in ack.stderr
    again = await run_cli("publish", "acknowledged", "--incident", incident, "--wait", **engine.env)
    assert again.returncode == 3 and "rejected (duplicate)" in again.stderr

    # not a terminal and no --wait: publish and go, as scripts expect (the rejection is not waited for)
    quick = await run_cli("publish", "acknowledged", "--incident", "DOES-NOT-EXIST", **engine.env)
    assert quick.returncode == 0 and quick.stderr == "", quick.stderr


async def test_publish_wait_says_when_no_verdict_comes(engine: Engine, postgres: Service) -> None:
    # an event whose (source, id) the engine already processed is dropped silently: nothing to wait for
    incident = f"SAME-{uuid.uuid4().hex[:6]}"
    args = (
        "publish",
        "reported",
        "--incident",
        incident,
        "--severity",
        "low",
        "--region",
        "au",
        "--id",
        "fixed-1",
    )
    first = await run_cli(*args, "--wait", **engine.env)
    assert first.returncode == 0, first.stderr
    started = time.monotonic()
    second = await run_cli(*args, "--wait", "--wait-timeout", "2", **engine.env)
    assert second.returncode == 4, second.stderr
    assert "no verdict within 2 s" in second.stderr and "Traceback" not in second.stderr
    assert time.monotonic() - started < 30


async def test_tail_follows_from_now_filters_and_stops_on_ctrl_c(engine: Engine) -> None:
    incident = f"TAIL-{uuid.uuid4().hex[:6]}"
    report = ("publish", "reported", "--incident", incident, "--severity", "critical", "--region", "au")
    before = await run_cli(*report, "--wait", **engine.env)
    assert before.returncode == 0, before.stderr
    tail = subprocess.Popen(
        [*CLI, "tail", "--json", "--incident", incident], env={**os.environ, **engine.env},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert tail.stderr is not None and tail.stdout is not None
        ready = await asyncio.to_thread(tail.stderr.readline)  # positioned: "following ... from now"
        assert "from now" in ready, ready
        acked = await run_cli("publish", "acknowledged", "--incident", incident, "--wait", **engine.env)
        assert acked.returncode == 0, acked.stderr
        line = await asyncio.wait_for(asyncio.to_thread(tail.stdout.readline), 30)
        shown = orjson.loads(line)  # the raw CloudEvent
        assert shown["type"] == "incident.state.changed" and shown["data"]["to"] == "acknowledged"
        tail.send_signal(signal.SIGINT)
        rest, errors = await asyncio.to_thread(tail.communicate, timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
    assert tail.returncode == 0 and "Traceback" not in errors, errors
    assert "reported" not in rest  # from now: the earlier state change is not shown


async def test_tail_from_the_beginning_shows_breaches_as_readable_lines(engine: Engine) -> None:
    incident = f"LATE-{uuid.uuid4().hex[:6]}"
    reported_at = (datetime.now(UTC) - timedelta(minutes=31)).isoformat()  # ack and restore both overdue
    published = await run_cli("publish", "reported", "--incident", incident, "--severity", "critical",
                              "--region", "au", "--time", reported_at, "--wait", **engine.env)  # fmt: skip
    assert published.returncode == 0, published.stderr
    ghost = f"GHOST-{uuid.uuid4().hex[:6]}"
    refused = await run_cli("publish", "acknowledged", "--incident", ghost, "--wait", **engine.env)
    assert refused.returncode == 3, refused.stderr
    readable = await run_cli("tail", "--from-beginning", "--incident", incident, "--topic", "breaches",
                             "--type", "breached", "--type", "failover.required", "--limit", "3",
                             "--timeout", "60", **engine.env)  # fmt: skip
    assert readable.returncode == 0, readable.stderr
    lines = readable.stdout.splitlines()
    assert len(lines) == 3 and all(incident in line for line in lines), lines
    assert sum("BREACHED" in line for line in lines) == 2 and sum("FAILOVER" in line for line in lines) == 1
    assert any("ack breached, was due" in line for line in lines)
    assert not any("warning" in line for line in lines)  # filtered out by --type
    nothing = await run_cli("tail", "--from-beginning", "--incident", incident, "--severity", "low",
                            "--limit", "1", "--timeout", "3", **engine.env)  # fmt: skip
    assert nothing.returncode == 1 and nothing.stdout == "" and "timeout: 0 of 1" in nothing.stderr

    # the engine said it too: JSON lines, no colour codes, the breach and the dead letter with their fields
    deadline = time.monotonic() + 30
    while True:
        logged = [orjson.loads(line) for line in engine.log.read_text().splitlines() if line.strip()]
        breaches = [
            e for e in logged if e["message"].startswith("SLA breached") and e.get("incident") == incident
        ]
        dead = [e for e in logged if e["message"].startswith("dead-lettered") and e.get("incident") == ghost]
        if (len(breaches) == 2 and dead) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert {(b["level"], b["clock"]) for b in breaches} == {("INFO", "ack"), ("INFO", "restore")}
    assert all(b["due_at"] and b["severity"] == "critical" for b in breaches)
    assert any(e["message"].startswith("failover required") and e.get("incident") == incident for e in logged)
    assert dead and dead[0]["level"] == "WARNING" and dead[0]["reason"] == "unknown_incident"


def test_engine_log_is_one_json_format(engine: Engine) -> None:
    text = engine.log.read_text()
    assert "\x1b[" not in text and "\\u001b[" not in text  # no terminal colour codes, raw or escaped
    logged = [orjson.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    loggers = {e["logger"] for e in logged}
    assert {"uvicorn.error", "faststream.kafka"} <= loggers, loggers  # theirs go through ours
    assert not [
        e for e in logged if e["logger"] == "aiokafka.consumer.group_coordinator" and e["level"] == "ERROR"
    ]


# Errors, not tracebacks -------------------------------------------------------------------------


def broken_policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, folder)
    path = folder / "livepro-1.yaml"
    path.write_text(path.read_text().replace("ack: {budget: 15m}", "ack: {budget: 15 minutes}", 1))
    return folder


@pytest.mark.parametrize("args", [["db", "migrate"], ["db", "archive", "--before", "2025-01", "--to", "."]])
def test_db_commands_with_the_database_down(args: list[str]) -> None:
    run = in_process(*args, DATABASE_URL=DOWN_DSN)
    assert_one_clear_error(
        run, "cannot reach PostgreSQL at 127.0.0.1:1", "connection refused", "DATABASE_URL"
    )


@pytest.mark.parametrize("args", [["replay"], ["replay", "--as-of", "2026-01-01"], ["report"]])
def test_replay_with_the_database_down(args: list[str]) -> None:
    assert_one_clear_error(in_process(*args, DATABASE_URL=DOWN_DSN), "cannot reach PostgreSQL at 127.0.0.1:1")


@pytest.mark.parametrize("args", [["replay"], ["replay", "--as-of", "2026-01-01"]])
def test_replay_with_a_broken_policy(tmp_path: Path, args: list[str]) -> None:
    folder = broken_policies(tmp_path)
    run = in_process(*args, DATABASE_URL=DOWN_DSN, INCIDENTS_POLICY_DIR=str(folder))
    error = assert_one_clear_error(
        run, f"{folder / 'livepro-1.yaml'}:17: severities.critical.clocks.ack.budget"
    )
    assert "expected a duration like 90s, 15m or 12h" in error


def test_publish_with_kafka_down() -> None:
    run = incidents("publish", "reported", "--incident", "X", "--severity", "low", "--region", "au",
                    KAFKA_BOOTSTRAP_SERVERS=DOWN_KAFKA)  # fmt: skip
    assert_one_clear_error(run, "cannot reach Kafka at 127.0.0.1:1 (KAFKA_BOOTSTRAP_SERVERS)")
    tail = in_process("tail", KAFKA_BOOTSTRAP_SERVERS=DOWN_KAFKA)
    assert_one_clear_error(tail, "cannot reach Kafka at 127.0.0.1:1")


def serve_error(run: subprocess.CompletedProcess[str]) -> str:
    """The one ERROR line `serve` logs (JSON) when it cannot start."""
    assert run.returncode == 2, run.stdout + run.stderr
    assert "Traceback" not in run.stdout + run.stderr and "s3cret" not in run.stdout
    logged = [orjson.loads(line) for line in run.stdout.splitlines()]  # still one format
    (error,) = [e for e in logged if e["level"] == "ERROR" and e["logger"] == "incident_engine"]
    return str(error["message"])


def test_serve_with_a_broken_policy(tmp_path: Path) -> None:
    folder = broken_policies(tmp_path)
    message = serve_error(incidents("serve", DATABASE_URL=DOWN_DSN, INCIDENTS_POLICY_DIR=str(folder)))
    assert message.startswith("cannot start: policies (INCIDENTS_POLICY_DIR): ")
    assert f"{folder / 'livepro-1.yaml'}:17: severities.critical.clocks.ack.budget: '15 minutes'" in message


def test_serve_with_the_database_unreachable_names_it_at_once_and_gives_up_in_time() -> None:
    started = time.monotonic()
    run = incidents("serve", "--startup-timeout", "2", DATABASE_URL=DOWN_DSN)
    message = serve_error(run)
    assert time.monotonic() - started < 30
    assert message.startswith("cannot start: cannot reach PostgreSQL at 127.0.0.1:1")
    assert "no answer within 2 s" in message
    first = orjson.loads(run.stdout.splitlines()[0])  # named from the first line on, not after the wait
    assert "127.0.0.1:1" in first["message"] and first["level"] == "WARNING"


async def test_serve_with_kafka_unreachable(postgres: Service) -> None:
    dsn = await fresh_database(postgres.url)
    run = await asyncio.to_thread(
        incidents, "serve", "--startup-timeout", "1", DATABASE_URL=dsn, KAFKA_BOOTSTRAP_SERVERS=DOWN_KAFKA
    )
    assert serve_error(run).startswith("cannot start: cannot reach Kafka at 127.0.0.1:1")


def test_serve_on_a_taken_port_stops_before_joining_the_group() -> None:
    """A second engine started by mistake must not take partitions from the running one: the port
    is bound before anything else, so it stops at once, without waiting for (or reaching) Kafka."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        run = incidents("serve", "--host", "127.0.0.1", "--port", str(port), DATABASE_URL=DOWN_DSN,
                        KAFKA_BOOTSTRAP_SERVERS=DOWN_KAFKA)  # fmt: skip
    message = serve_error(run)
    assert message.startswith(f"cannot start: the HTTP port 127.0.0.1:{port} cannot be bound")
    assert "--port, INCIDENTS_HTTP_PORT" in message
    assert time.monotonic() - started < 20  # no wait for PostgreSQL or Kafka
    assert "PostgreSQL" not in run.stdout and "partitions" not in run.stdout

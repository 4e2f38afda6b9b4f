"""The README's way to run the notifier beside `make run`, as written: the example routing file, the
variables the README sets, the same Kafka and PostgreSQL; it starts, gets ready and routes a breach."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from devstack.process import free_port
from devstack.stack import Service, fresh_database
from tests.integration.notifier_helpers import outputs, produce
from tests.unit.test_local_examples import section, sh_block

pytestmark = pytest.mark.integration


async def test_the_notifier_runs_beside_make_run_as_the_readme_says(
    kafka: Service, postgres: Service, tmp_path: Path
) -> None:
    dsn = await fresh_database(postgres.url)
    topic = f"beside-{uuid.uuid4().hex[:8]}"
    await produce(kafka.url, topic, outputs("beside", 1))  # a breach: to on-call and duty-manager
    port = free_port()
    block = sh_block(section("Notifications"), "notify --config deploy/local/notifier.yaml")
    lines = block.splitlines()
    (last,) = [i for i, line in enumerate(lines) if "notify --config" in line]
    lines[last] = "exec " + lines[last].split("#")[0] + f" --port {port}"  # SIGTERM reaches it
    script = "\n".join(lines).replace(
        ".venv/bin/incidents", f"{shlex.quote(sys.executable)} -m incident_engine.cli"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "INCIDENTS_NOTIFIER_"))},
        "DEVSTACK_HOME": str(tmp_path / "dev"),  # no dev services: `dev status` prints nothing
        "KAFKA_BOOTSTRAP_SERVERS": kafka.url,  # as `eval "$(incidents dev status)"` sets them
        "DATABASE_URL": dsn,
        "INCIDENTS_NOTIFIER_TOPICS": topic,
        "INCIDENTS_NOTIFIER_GROUP": f"beside-{uuid.uuid4().hex[:8]}",
        "INCIDENTS_NOTIFIER_DEAD_LETTER_TOPIC": f"{topic}.dead",
        "INCIDENTS_NOTIFIER_HTTP_HOST": "127.0.0.1",
        "INCIDENTS_NOTIFIER_POLL_MS": "50",
        "INCIDENTS_NOTIFIER_TIMEOUT_MS": "1000",
        "OTEL_TRACES_EXPORTER": "none",
    }
    log = tmp_path / "notifier.log"
    with log.open("ab") as out:
        child = subprocess.Popen(
            ["bash", "-ec", script],
            cwd=Path(__file__).parents[2],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

            async def ready() -> bool:
                assert child.poll() is None, log.read_text()
                try:
                    return (await client.get("/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await until(ready, 90, "the notifier ready")
            assert "secrets readable" in log.read_text()  # the README's --check passed first

            async def routed() -> bool:
                metrics = (await client.get("/metrics")).text
                return 'notifier_attempts_total{destination="duty-manager"' in metrics

            await until(routed, 60, "an attempt to the example's duty-manager (email on 127.0.0.1:2525)")
    finally:
        child.send_signal(signal.SIGTERM)
        code = child.wait(30)
    assert code == 0, log.read_text()[-2000:]


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None

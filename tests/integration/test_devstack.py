"""The local stack is real: Kafka round trips with consumer groups, broker restarts, PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devstack.kafka import KafkaCluster
from devstack.postgres import base_dir
from devstack.process import free_port, pid_alive
from devstack.stack import Service, _scratch

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


async def _create_topic(bootstrap: str, partitions: int = 3, replication: int = 1) -> str:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication)])
    finally:
        await admin.close()
    return topic


async def _produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=value[-1:])
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, group: str, count: int, commit: bool = True) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group, auto_offset_reset="earliest",
        enable_auto_commit=False,
    )  # fmt: skip
    await consumer.start()
    got: list[bytes] = []
    try:
        while len(got) < count:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                got.extend(r.value for r in records if r.value is not None)
        if commit:
            await consumer.commit()
    finally:
        await consumer.stop()
    return got


async def test_consumer_group_resumes_from_committed_offset(kafka: Service) -> None:
    topic = await _create_topic(kafka.url)
    first = [f"a{i}".encode() for i in range(30)]
    await _produce(kafka.url, topic, first)
    group = f"g-{uuid.uuid4().hex[:6]}"
    assert sorted(await _consume(kafka.url, topic, group, 30)) == sorted(first)

    second = [f"b{i}".encode() for i in range(20)]
    await _produce(kafka.url, topic, second)
    # A new consumer of the same group (the "restarted" one) sees only what came after the commit.
    resumed = await _consume(kafka.url, topic, group, 20)
    assert sorted(resumed) == sorted(second)

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.url)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    assert sum(meta.offset for tp, meta in offsets.items() if tp.topic == topic) == 50


async def test_postgres_table_round_trip(postgres: Service) -> None:
    conn = await asyncpg.connect(postgres.url)
    try:
        await conn.execute("CREATE TEMP TABLE probe (id int PRIMARY KEY, body jsonb NOT NULL)")
        await conn.executemany(
            "INSERT INTO probe VALUES ($1, $2)", [(i, f'{{"n": {i}}}') for i in range(100)]
        )
        total = await conn.fetchval("SELECT sum((body->>'n')::int) FROM probe")
        version = await conn.fetchval("SHOW server_version_num")
    finally:
        await conn.close()
    assert total == sum(range(100))
    assert int(version) >= 150000


@pytest.mark.slow
async def test_broker_restart_in_three_node_cluster_loses_nothing() -> None:
    cluster = KafkaCluster.create(_scratch("kafka3"), size=3)
    cluster.heap = "384m"
    await asyncio.to_thread(cluster.start)
    try:
        topic = await _create_topic(cluster.bootstrap_servers, partitions=3, replication=3)
        before = [f"x{i}".encode() for i in range(200)]
        await _produce(cluster.bootstrap_servers, topic, before)
        await asyncio.to_thread(cluster.stop_node, 2)
        during = [f"y{i}".encode() for i in range(200)]
        await _produce(cluster.bootstrap_servers, topic, during)
        await asyncio.to_thread(cluster.start_node, 2)
        await asyncio.to_thread(cluster.stop_node, 1, True)  # crash another one: data lives on
        got = await asyncio.wait_for(_consume(cluster.bootstrap_servers, topic, "g", 400), 60)
        assert sorted(got) == sorted(before + during)
    finally:
        await asyncio.to_thread(cluster.stop)


def test_services_die_with_a_killed_test_run() -> None:
    """A test run killed with SIGKILL (no finalizers run) leaves no broker or database behind."""
    script = (
        "import json, sys\n"
        "from devstack.stack import start_kafka, start_postgres\n"
        "from devstack.kafka import KafkaCluster\n"
        "from devstack.postgres import LocalPostgres\n"
        "from devstack.stack import _scratch\n"
        "cluster = KafkaCluster.create(_scratch('orphan-kafka'), size=1)\n"
        "cluster.start()\n"
        "pg = LocalPostgres.create(_scratch('orphan-pg') / 'data')\n"
        "pg.start()\n"
        "print(json.dumps([cluster.nodes[0].pid, pg.pid]), flush=True)\n"
        "import time; time.sleep(600)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")}
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=env, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        import json

        pids = json.loads(proc.stdout.readline())
        assert all(pid_alive(p) for p in pids)
    finally:
        proc.kill()  # like a CI timeout or kill -9 of pytest
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    import time

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(pid_alive(p) for p in pids), f"orphans left: {pids}"


def test_make_run_stops_what_it_started_keeps_what_it_found_and_reset_deletes_the_data() -> None:
    """`deploy/local/with-services.sh` (what `make run` and `make demo` run) as a user meets it."""
    import json
    import signal

    from devstack.devhome import save_ports

    home = _scratch("devhome-run")
    kport, pport = free_port(), free_port()
    save_ports(home, {"kafka": kport, "postgres": pport})  # never a developer's ports
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")}
    env |= {"DEVSTACK_HOME": str(home), "INCIDENTS_API_OPEN": "true"}
    env.pop("KEEP_SERVICES", None)
    script = [str(REPO / "deploy" / "local" / "with-services.sh")]
    cli = [sys.executable, "-m", "incident_engine.cli"]

    def running() -> bool:
        return (
            subprocess.run([*cli, "dev", "status"], env=env, capture_output=True, timeout=60).returncode == 0
        )

    # Ctrl-C reaches the whole foreground group: the command ends, then the services this run started.
    run = subprocess.Popen([*script, "sleep", "600"], env=env, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)  # fmt: skip
    assert run.stderr is not None
    said = []
    for line in run.stderr:
        said.append(line)
        if line.startswith("applied:") or "schema is up to date" in line:
            break
    assert running(), "".join(said)
    state = json.loads((home / "state.json").read_text())
    pids = [state["kafka"]["pid"], state["postgres"]["pid"]]
    assert f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{kport}" in "".join(said)
    assert f"export DATABASE_URL=postgresql://postgres@127.0.0.1:{pport}/incidents" in "".join(said)
    os.killpg(run.pid, signal.SIGINT)
    said.append(run.stderr.read())
    run.wait(120)
    run.stderr.close()
    text = "".join(said)
    assert "they stop when this run ends (KEEP_SERVICES=1 keeps them running)" in text
    assert "stopping the local Kafka and PostgreSQL this run started" in text and "dev reset" in text
    assert not running() and (home / "pgdata" / "PG_VERSION").exists()  # stopped, data kept
    assert not any(pid_alive(p) for p in pids)
    assert subprocess.run(["pgrep", "-f", str(home)], capture_output=True).stdout == b""

    kept = subprocess.run([*script, "true"], env={**env, "KEEP_SERVICES": "1"}, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert kept.returncode == 0, kept.stderr
    assert "keep running (KEEP_SERVICES=1): stop them with" in kept.stderr and "dev down" in kept.stderr
    assert running()

    async def demo_database_answers() -> int:  # `make demo` has a database of its own
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{pport}/incidents_demo")
        try:
            return int(await conn.fetchval("SELECT 1"))
        finally:
            await conn.close()

    assert asyncio.run(demo_database_answers()) == 1
    found = subprocess.run([*script, "true"], env=env, capture_output=True, text=True, timeout=300)
    assert found.returncode == 0, found.stderr
    assert "keep running (they were running before this run)" in found.stderr
    assert running()  # services found running are left alone

    reset = subprocess.run(
        [*cli, "dev", "reset", "--yes"], env=env, capture_output=True, text=True, timeout=120
    )
    assert reset.returncode == 0 and "deleted" in reset.stderr, reset.stderr
    assert not running() and not home.exists()
    assert subprocess.run(["pgrep", "-f", str(home)], capture_output=True).stdout == b""
    assert base_dir().exists()  # only this checkout's folder went
    again = subprocess.run(
        [*cli, "dev", "reset", "--yes"], env=env, capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and "nothing to reset" in again.stderr


def test_dev_up_interrupted_while_starting_leaves_nothing_running() -> None:
    """Ctrl-C during `make run`'s set-up: the broker, started detached, must not outlive it."""
    import signal
    import time

    home = _scratch("devhome-int")
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")}
    env["DEVSTACK_HOME"] = str(home)
    cli = [sys.executable, "-m", "incident_engine.cli", "dev", "up"]
    up = subprocess.Popen(cli, env=env, text=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          start_new_session=True)  # fmt: skip

    def broker_running() -> bool:
        found = subprocess.run(["pgrep", "-f", f"kafka.Kafka {home}"], capture_output=True, text=True)
        return found.stdout.strip() != ""

    deadline = time.monotonic() + 120
    while not broker_running() and up.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert broker_running(), "the broker never started"
    os.killpg(up.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
    assert up.stderr is not None
    said = up.stderr.read()
    up.stderr.close()
    assert up.wait(60) == 130, said
    assert "interrupted: stopped the services that were starting" in said
    leftovers = subprocess.run(["pgrep", "-f", str(home)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", f"processes left behind: {leftovers.stdout}"
    import shutil

    shutil.rmtree(home, ignore_errors=True)

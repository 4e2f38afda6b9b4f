"""Find or start Kafka and PostgreSQL, in the order of design §2: environment, Docker, local processes."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from devstack.kafka import KafkaCluster
from devstack.postgres import LocalPostgres, base_dir
from devstack.process import progress, sweep_stale


@dataclass
class Service:
    """A running (or borrowed) service: where to reach it, how it came, how to stop it."""

    url: str
    mode: str  # "env" | "docker" | "local"
    stop: Callable[[], None] = field(default=lambda: None)


def docker_available() -> bool:
    """True when a Docker engine answers (testcontainers can then run the services)."""
    if os.environ.get("DEVSTACK_NO_DOCKER"):
        return False
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker  # a testcontainers dependency

        client = docker.from_env(timeout=2)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _scratch(name: str) -> Path:
    root = base_dir() / "runs"
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    # A run killed before it could clean up (SIGKILL, a lost session) left its folder: gone once no
    # process uses it, or the runs of a busy machine fill its disk (gigabytes seen).
    swept = sweep_stale(list(root.iterdir()))
    if swept:
        progress(f"deleted {len(swept)} scratch folder(s) of earlier runs left under {root}")
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))


def start_kafka(nodes: int = 1) -> tuple[Service, KafkaCluster | None]:
    """A Kafka for tests and benchmarks; the local cluster object is returned for fault injection."""
    if env := os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        progress(f"using Kafka from KAFKA_BOOTSTRAP_SERVERS={env}")
        return Service(env, "env"), None
    if nodes == 1 and docker_available():
        from testcontainers.kafka import KafkaContainer

        container = KafkaContainer().with_kraft()
        container.start()
        return Service(container.get_bootstrap_server(), "docker", container.stop), None
    cluster = KafkaCluster.create(_scratch("kafka"), size=nodes)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return Service(
        cluster.bootstrap_servers, "local", lambda: _stop_and_clean(cluster.stop, cluster.base_dir)
    ), cluster


def start_postgres() -> tuple[Service, LocalPostgres | None]:
    """A PostgreSQL for tests and benchmarks; the local server object is returned for fault injection."""
    if env := os.environ.get("DATABASE_URL"):
        progress("using PostgreSQL from DATABASE_URL")
        return Service(env, "env"), None
    if docker_available():
        from testcontainers.postgres import PostgresContainer

        container = PostgresContainer("postgres:17-alpine", dbname="incidents", driver=None)
        container.start()
        return Service(container.get_connection_url(), "docker", container.stop), None
    scratch = _scratch("postgres")
    server = LocalPostgres.create(scratch / "data")
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    return Service(server.dsn, "local", lambda: _stop_and_clean(server.stop, scratch)), server


def _stop_and_clean(stop: Callable[[], None], folder: Path) -> None:
    stop()
    import shutil

    with contextlib.suppress(OSError):
        shutil.rmtree(folder)


async def fresh_database(server_url: str) -> str:
    """Create an empty database on a server (tests and benchmarks isolate runs this way); return its DSN."""
    import uuid

    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server_url.rsplit("/", 1)[0] + "/" + name

"""A local Apache Kafka cluster in KRaft mode: jars from Maven Central, run with the machine's Java."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import shutil
import threading
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from devstack.process import (
    CACHE_DIR,
    REPO_ROOT,
    DevstackError,
    ensure_port_free,
    free_port,
    pid_alive,
    progress,
    run_checked,
    spawn,
    stop_pid,
    wait_until,
)

POM = REPO_ROOT / "deploy" / "local" / "pom.xml"
JAVA_HINT = "Install a Java 17+ runtime (Debian: `apt-get install -y openjdk-17-jre-headless`)."
MVN_HINT = (
    "The broker jars come from Maven Central through deploy/local/pom.xml: install Maven "
    "(`apt-get install -y maven`) and check that Maven Central is reachable."
)
LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.server.name = kafka.server.BrokerServer
logger.server.level = INFO
"""

T = TypeVar("T")


def kafka_version() -> str:
    """The broker version pinned in deploy/local/pom.xml."""
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", POM.read_text())
    if not match:
        raise DevstackError(f"{POM} names no <kafka.version>.")
    return match.group(1)


def ensure_jars() -> Path:
    """Copy the broker and its runtime dependencies from Maven into the cache (once) and return the folder."""
    libs = CACHE_DIR / "kafka" / kafka_version() / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if shutil.which("java") is None:
        raise DevstackError(f"Kafka needs Java, and `java` is not on PATH. {JAVA_HINT}")
    if shutil.which("mvn") is None:
        raise DevstackError(f"Kafka's jars are fetched with Maven, and `mvn` is not on PATH. {MVN_HINT}")
    progress(f"fetching Apache Kafka {kafka_version()} jars from Maven Central into {libs} (once)")
    if libs.exists():
        shutil.rmtree(libs)
    run_checked(
        [
            "mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}", "-DincludeScope=runtime",
        ],
        "Fetching the Kafka broker jars with Maven",
        MVN_HINT,
    )  # fmt: skip
    marker.write_text(kafka_version())
    return libs


def random_cluster_id() -> str:
    """A KRaft cluster id (base64url of a UUID). Like Kafka's own Uuid.randomUuid, never one starting
    with "-": the storage tool would read it as an option (1 run in 64 failed to format)."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a private loop (callers may be inside a running loop)."""
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=runner, daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return,unused-ignore]


@dataclass
class KafkaNode:
    """One combined broker+controller process of the cluster."""

    node_id: int
    port: int
    controller_port: int
    home: Path
    pid: int | None = None

    @property
    def log_file(self) -> Path:
        """Where the broker's output goes."""
        return self.home / "broker.log"


@dataclass
class KafkaCluster:
    """N KRaft nodes on 127.0.0.1, each a broker and a controller voter."""

    base_dir: Path
    nodes: list[KafkaNode] = field(default_factory=list)
    cluster_id: str = ""
    heap: str = "768m"
    # The dev stack's brokers take messages up to 10 MiB; None keeps Kafka's default (about 1 MiB),
    # for tests that must see what a production broker refuses.
    message_max_bytes: int | None = 10_485_760

    @classmethod
    def create(
        cls,
        base_dir: Path,
        size: int = 1,
        ports: list[int] | None = None,
        message_max_bytes: int | None = 10_485_760,
    ) -> KafkaCluster:
        """Lay out (but do not start) a cluster of `size` nodes under `base_dir`."""
        if ports is not None:
            for port in ports:
                ensure_port_free(port, "Kafka")
        chosen = ports or [free_port() for _ in range(size)]
        nodes = [
            KafkaNode(
                node_id=i + 1, port=chosen[i], controller_port=free_port(), home=base_dir / f"node-{i + 1}"
            )
            for i in range(size)
        ]
        return cls(
            base_dir=base_dir,
            nodes=nodes,
            cluster_id=random_cluster_id(),
            message_max_bytes=message_max_bytes,
        )

    @property
    def bootstrap_servers(self) -> str:
        """The `host:port,...` list clients connect to."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def _properties(self, node: KafkaNode) -> str:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        replicas = min(3, len(self.nodes))
        return "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={node.node_id}",
                f"controller.quorum.voters={voters}",
                f"listeners=PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}",
                "controller.listener.names=CONTROLLER",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                "inter.broker.listener.name=PLAINTEXT",
                f"log.dirs={node.home / 'data'}",
                f"offsets.topic.replication.factor={replicas}",
                "offsets.topic.num.partitions=10",
                f"transaction.state.log.replication.factor={replicas}",
                f"transaction.state.log.min.isr={min(2, replicas)}",
                f"default.replication.factor={replicas}",
                f"min.insync.replicas={min(2, replicas)}",
                "num.partitions=6",  # as the engine creates them: an auto-created topic gets the same
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=true",
                *([f"message.max.bytes={self.message_max_bytes}"] if self.message_max_bytes else []),
                "",
            ]
        )

    def _java(self, libs: Path, *args: str) -> list[str]:
        return [
            "java", f"-Xmx{self.heap}", "-Xms256m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.base_dir / 'log4j2.properties'}",
            "-cp", f"{libs}/*", *args,
        ]  # fmt: skip

    def format(self) -> None:
        """Write each node's server.properties and format its storage (`kafka-storage format`)."""
        libs = ensure_jars()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        (self.base_dir / "log4j2.properties").write_text(LOG4J2)
        for node in self.nodes:
            node.home.mkdir(parents=True, exist_ok=True)
            props = node.home / "server.properties"
            props.write_text(self._properties(node))
            if not (node.home / "data" / "meta.properties").exists():
                run_checked(
                    self._java(
                        libs, "kafka.tools.StorageTool", "format", "-t", self.cluster_id, "-c", str(props)
                    ),
                    f"Formatting Kafka storage of node {node.node_id}",
                    JAVA_HINT,
                )

    def start(self, detached: bool = False, timeout: float = 90.0) -> None:
        """Format if needed, start every node and wait until the cluster serves metadata and topics."""
        progress(
            f"starting Kafka {kafka_version()} (KRaft, {len(self.nodes)} node(s)) on {self.bootstrap_servers}"
        )
        self.format()
        for node in self.nodes:
            self.start_node(node.node_id, detached=detached, wait=False)
        self.wait_ready(timeout)
        progress(f"Kafka ready on {self.bootstrap_servers}")

    def start_node(self, node_id: int, detached: bool = False, wait: bool = True) -> None:
        """(Re)start one node, e.g. after `stop_node` in a fault test."""
        node = self.node(node_id)
        ensure_port_free(node.port, f"Kafka node {node_id}")
        libs = ensure_jars()
        proc = spawn(
            self._java(libs, "kafka.Kafka", str(node.home / "server.properties")),
            node.log_file,
            detached=detached,
        )
        node.pid = proc.pid
        if wait:
            self.wait_ready(90.0)

    def stop_node(self, node_id: int, kill: bool = False) -> None:
        """Stop one node (SIGTERM, or SIGKILL with `kill`), leaving its data for a restart."""
        import signal

        node = self.node(node_id)
        if node.pid is not None:
            stop_pid(node.pid, timeout=30.0, sig=signal.SIGKILL if kill else signal.SIGTERM)
            node.pid = None

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            self.stop_node(node.node_id)

    def node(self, node_id: int) -> KafkaNode:
        """The node with this id."""
        return next(n for n in self.nodes if n.node_id == node_id)

    def running(self) -> list[KafkaNode]:
        """The nodes whose process is alive."""
        return [n for n in self.nodes if n.pid is not None and pid_alive(n.pid)]

    def wait_ready(self, timeout: float) -> None:
        """Wait until the live brokers answer metadata and a topic can be created and written."""
        live = self.running()
        for node in self.nodes:
            if node.pid is not None and node not in live:
                raise DevstackError(
                    f"Kafka node {node.node_id} exited during start-up; see {node.log_file}:\n    "
                    + "\n    ".join(node.log_file.read_text(errors="replace").splitlines()[-15:])
                )
        wait_until(lambda: _run_async(_probe(self.bootstrap_servers, len(live))), timeout, "Kafka",
                   live[0].log_file if live else None)  # fmt: skip


async def _probe(bootstrap: str, expected_brokers: int) -> bool:
    """True when `expected_brokers` answer metadata and a probe topic takes a write."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import KafkaError, TopicAlreadyExistsError

    # Connection refusals are expected while the broker boots; aiokafka would log each one.
    quiet = logging.getLogger("aiokafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=3000)
    try:
        await asyncio.wait_for(admin.start(), 5)
        cluster = await asyncio.wait_for(admin.describe_cluster(), 5)
        if len(cluster["brokers"]) < expected_brokers:
            return False
        try:
            rf = min(expected_brokers, 3)
            await admin.create_topics([NewTopic("_devstack_ready", 1, rf)])
        except TopicAlreadyExistsError:
            pass
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=5000, acks="all")
        await asyncio.wait_for(producer.start(), 5)
        try:
            await asyncio.wait_for(producer.send_and_wait("_devstack_ready", b"ready"), 10)
        finally:
            await producer.stop()
        return True
    except (TimeoutError, KafkaError, OSError):
        return False
    finally:
        await admin.close()
        quiet.setLevel(level)

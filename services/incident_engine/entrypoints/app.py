"""The composition root: settings -> Postgres, Kafka (FastStream), domain, loop, relay, telemetry, HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from faststream import AckPolicy
from faststream.kafka import KafkaBroker

from incident_contracts import TOPIC_BREACHES, TOPIC_EVENTS, TOPIC_REJECTED, TOPIC_STATE
from incident_contracts.constants import (
    FAILOVER_REQUIRED,
    INCIDENT_REJECTED,
    SLA_BREACHED,
    SLA_RETRACTED,
    SLA_WARNING,
)
from incident_engine.adapters import kafka_records
from incident_engine.adapters.postgres.migrate import migrate
from incident_engine.adapters.postgres.store import PostgresStore, create_pool, pool_timeouts
from incident_engine.adapters.store import OutboxRow
from incident_engine.adapters.telemetry import Observation, Telemetry, root_sample_ratio, setup_telemetry
from incident_engine.config import Settings
from incident_engine.domain import (
    Calendar,
    Incident,
    PolicyError,
    PolicyRegistry,
    SlaDomain,
    UnknownPolicyError,
)
from incident_engine.entrypoints.consumer import FETCH_WAIT_MS, EngineLoop
from incident_engine.entrypoints.emit_log import OutputLog
from incident_engine.entrypoints.processor import BatchProcessor, BatchResult
from incident_engine.entrypoints.relay import OutboxRelay
from incident_engine.gc_pause import tune_for_batches
from incident_platform.cli_errors import kafka_unreachable, postgres_address, postgres_unreachable, reason_of
from incident_platform.kafka import kafka_security

log = logging.getLogger(__name__)
_SLA_KINDS = {
    SLA_WARNING: "warning",
    SLA_BREACHED: "breached",
    FAILOVER_REQUIRED: "failover",
    SLA_RETRACTED: "retracted",
}
OUTPUT_TOPICS = (TOPIC_STATE, TOPIC_BREACHES, TOPIC_REJECTED)
# Set explicitly on every topic the engine creates (never the broker's default, which differs between
# a dev stack and production). Outputs stay far below it: a dead letter quotes at most
# ORIGINAL_QUOTE_LIMIT bytes of its original; the input topic takes the largest input the engine
# accepts plus room for headers.
OUTPUT_MAX_MESSAGE_BYTES = 1_048_576
_HEADROOM = 65_536


def topic_max_message_bytes(settings: Settings) -> dict[str, int]:
    """The `max.message.bytes` of each topic the engine creates."""
    sizes = dict.fromkeys(OUTPUT_TOPICS, OUTPUT_MAX_MESSAGE_BYTES)
    sizes[TOPIC_EVENTS] = settings.incidents_max_message_bytes + _HEADROOM
    return sizes


def build_broker(settings: Settings, listener: EngineLoop | None = None) -> KafkaBroker:
    """The FastStream broker, with the engine's channels declared (for the AsyncAPI document too)."""
    kafka_records.install()  # a header name that is not UTF-8 is a dead letter, not a stuck partition
    broker = KafkaBroker(
        settings.kafka_bootstrap_servers,
        client_id="incident-engine",
        # FastStream's own logger has a coloured text handler; ours goes through the JSON one
        logger=logging.getLogger("faststream.kafka"),
        **kafka_security(settings),
    )
    broker.subscriber(
        TOPIC_EVENTS,
        group_id=settings.incidents_consumer_group,
        ack_policy=AckPolicy.MANUAL,  # offsets live in Postgres, committed with the batch's effects
        auto_offset_reset="earliest",
        listener=listener,  # the loop seeks to Postgres offsets and loads timers on assignment
        group_instance_id=settings.incidents_instance_id,
        session_timeout_ms=settings.incidents_session_timeout_ms,
        heartbeat_interval_ms=max(500, settings.incidents_session_timeout_ms // 3),
        max_partition_fetch_bytes=max(1_048_576, settings.incidents_max_message_bytes + 65_536),
        # A caught-up partition's SLA time is that of its last fetch response: a short long-poll
        # keeps it fresh when the topic is idle (timers wait for it, see EngineLoop).
        fetch_max_wait_ms=FETCH_WAIT_MS,
        title=f"{TOPIC_EVENTS}:consume",
        description="Incident events from the upstream channels (CloudEvents, keyed by incident id).",
    )
    for topic, what in (
        (TOPIC_STATE, "Accepted transitions (incident.state.changed)."),
        (TOPIC_BREACHES, "SLA warnings, breaches and failover orders."),
        (TOPIC_REJECTED, "Dead letters with the reason and the original message."),
    ):
        broker.publisher(topic, title=f"{topic}:publish", description=what)
    return broker


async def ensure_topics(settings: Settings) -> None:
    """Create the contract's topics when missing (partitions from the settings, `max.message.bytes`
    explicit: see `topic_max_message_bytes`)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap_servers, **kafka_security(settings)
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        sizes = topic_max_message_bytes(settings)
        wanted = [t for t in (TOPIC_EVENTS, *OUTPUT_TOPICS) if t not in existing]
        for topic in wanted:
            config = {"max.message.bytes": str(sizes[topic])}
            if topic == TOPIC_EVENTS:
                # Record timestamps by the broker: when an event was taken, whatever its sender's
                # clock says (the engine judges how far ahead an event's `time` is against it).
                config["message.timestamp.type"] = "LogAppendTime"
            new = NewTopic(topic, settings.incidents_topic_partitions, 1, topic_configs=config)
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([new])
    finally:
        await admin.close()


def engine_pool_options(settings: Settings) -> dict[str, Any]:
    """The engine pool's timeouts from the settings (no Postgres call can hang forever)."""
    s = settings
    return pool_timeouts(
        s.incidents_pg_connect_timeout_ms,
        s.incidents_pg_command_timeout_ms,
        s.incidents_pg_statement_timeout_ms,
        s.incidents_pg_idle_in_transaction_timeout_ms,
    )


class StartupError(Exception):
    """What keeps the engine from starting, in one line that says where and what to do."""


async def wait_for_postgres(
    dsn: str, timeout: float = 60.0, settings: Settings | None = None
) -> asyncpg.Pool:
    """A pool, once Postgres accepts connections (it may still be starting); timeouts from `settings`.

    Raises StartupError naming the server when it does not answer within `timeout` seconds."""
    options = engine_pool_options(settings) if settings is not None else {}
    deadline = asyncio.get_running_loop().time() + timeout
    where = postgres_address(dsn)
    while True:
        try:
            return await create_pool(dsn, min_size=2, max_size=8, **options)
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
            raise StartupError(postgres_unreachable(dsn, exc)) from exc  # waiting cannot fix it
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            if asyncio.get_running_loop().time() > deadline:
                reason = f"no answer within {timeout:g} s ({reason_of(exc)})"
                raise StartupError(postgres_unreachable(dsn, reason)) from exc
            log.warning(
                "waiting for PostgreSQL at %s (DATABASE_URL): %s", where, reason_of(exc),
                extra={"postgres": where},
            )  # fmt: skip
            await asyncio.sleep(1.0)


async def wait_for_kafka(settings: Settings, timeout: float = 60.0) -> None:
    """Return once a Kafka broker answers; StartupError naming the servers after `timeout` seconds."""
    bootstrap = settings.kafka_bootstrap_servers
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **kafka_security(settings))
        try:
            await admin.start()
            return
        except KafkaError as exc:
            if asyncio.get_running_loop().time() > deadline:
                reason = f"no answer within {timeout:g} s ({reason_of(exc)})"
                raise StartupError(kafka_unreachable(bootstrap, reason)) from exc
            log.warning("waiting for Kafka at %s (KAFKA_BOOTSTRAP_SERVERS): %s", bootstrap, reason_of(exc))
            await asyncio.sleep(1.0)
        finally:
            with contextlib.suppress(Exception):
                await admin.close()


def load_domain(settings: Settings) -> SlaDomain:
    """The policies of INCIDENTS_POLICY_DIR as a domain; StartupError says what is wrong with them."""
    try:
        registry = PolicyRegistry.load(settings.incidents_policy_dir)
        registry.get(settings.incidents_default_policy)
    except PolicyError as exc:
        raise StartupError(f"policies (INCIDENTS_POLICY_DIR): {exc}") from exc
    except UnknownPolicyError as exc:
        raise StartupError(f"INCIDENTS_DEFAULT_POLICY: {exc}") from exc
    return SlaDomain(registry, settings.incidents_default_policy)


async def check_startup(settings: Settings, timeout: float = 60.0) -> None:
    """Before serving: the policies load, PostgreSQL and Kafka answer (each waited for up to `timeout`)."""
    load_domain(settings)
    pool = await wait_for_postgres(settings.database_url.get_secret_value(), timeout, settings)
    await pool.close()
    await wait_for_kafka(settings, timeout)


def relay_producer(s: Settings) -> AIOKafkaProducer:
    """The outbox relay's producer (not started): idempotent, `acks=all`, batches of up to 256 KiB."""
    return AIOKafkaProducer(
        bootstrap_servers=s.kafka_bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        max_request_size=max(1_048_576, s.incidents_max_message_bytes * 2),
        **kafka_security(s),
    )


@dataclass
class EngineService:
    """One engine replica: start, serve until stopped, stop gracefully."""

    settings: Settings
    telemetry: Telemetry | None = None
    pool: asyncpg.Pool | None = None
    broker: KafkaBroker | None = None
    producer: AIOKafkaProducer | None = None
    loop: EngineLoop | None = None
    relay: OutboxRelay | None = None
    store: PostgresStore | None = None
    domain: SlaDomain | None = None
    gauges: dict[str, int] = field(default_factory=dict)
    lag: dict[int, int] = field(default_factory=dict)
    kafka_seen: float = 0.0  # loop time of the last answer from the Kafka cluster
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    started: bool = False
    output_log: OutputLog = field(default_factory=OutputLog)  # breaches, failovers, dead letters

    async def start(self) -> None:
        """Connect, migrate, join the consumer group and start the loop and the relay."""
        s = self.settings
        tune_for_batches()
        self.telemetry = self.telemetry or setup_telemetry()
        dsn = s.database_url.get_secret_value()
        self.pool = await wait_for_postgres(dsn, settings=s)
        await migrate(dsn)
        await ensure_topics(s)
        self.store = PostgresStore(self.pool)
        domain = self.domain = load_domain(s)
        processor = BatchProcessor(
            domain,
            self.store,
            s.incidents_consumer_group,
            max_message_bytes=s.incidents_max_message_bytes,
            max_clock_skew=s.incidents_max_clock_skew,
            max_event_age=s.incidents_max_event_age,
            tracer=self.telemetry.tracer if self.telemetry.enabled else None,
            root_sample_ratio=root_sample_ratio(),
            breach_grace=timedelta(milliseconds=s.incidents_breach_grace_ms),
        )
        self.loop = EngineLoop(
            processor,
            self.store,
            batch_max=s.incidents_batch_max,
            batch_timeout_ms=s.incidents_batch_timeout_ms,
            allowance=timedelta(milliseconds=s.incidents_event_time_allowance_ms),
            on_batch=self._after_batch,
            before_commit=self._before_commit,
            on_timer_dropped=self._timer_dropped,
        )
        self.producer = relay_producer(self.settings)
        await self.producer.start()
        loop = self.loop
        self.relay = OutboxRelay(
            self.store,
            self.producer,
            lambda: sorted(loop.assigned),
            renew_producer=self._renew_producer,
            on_parked=self._parked,
        )
        self.broker = build_broker(s, listener=self.loop)
        subscriber = next(iter(self.broker.subscribers))
        await self.broker.start()
        consumer = getattr(subscriber, "consumer", None)
        assert consumer is not None, "FastStream did not start the subscriber's consumer"
        self.loop.consumer = consumer  # before any rebalance callback can need it
        self._observe()
        self.tasks = [
            asyncio.create_task(self.loop.run(consumer), name="engine-loop"),
            asyncio.create_task(self.relay.run(), name="outbox-relay"),
            asyncio.create_task(self._sample_gauges(), name="gauges"),
        ]
        for task in self.tasks:
            task.add_done_callback(self._task_ended)
        self.started = True
        log.info("engine started: group %s on %s", s.incidents_consumer_group, s.kafka_bootstrap_servers)

    def _timer_dropped(self, _incident_id: str) -> None:
        if self.telemetry is not None:
            self.telemetry.metrics.timer_dropped()

    async def _renew_producer(self) -> AIOKafkaProducer:
        """A started producer in place of the relay's (whose idempotent sequence a refusal broke)."""
        new = relay_producer(self.settings)
        try:
            await new.start()
        except BaseException:  # the relay keeps the old one, and tries again next round
            with contextlib.suppress(Exception):
                await new.stop()
            raise
        old, self.producer = self.producer, new
        if old is not None:
            with contextlib.suppress(Exception):
                await old.stop()
        log.info("outbox relay: new Kafka producer after a refused output")
        return self.producer

    def _parked(self, row: OutboxRow, _error: str) -> None:
        if self.telemetry is not None:
            self.telemetry.metrics.parked(row.topic)

    def _before_commit(self, result: BatchResult) -> None:
        if self.relay is not None:
            result.write.sent_outbox = self.relay.take_sent()

    def _after_batch(self, result: BatchResult, seconds: float) -> None:
        if self.relay is not None:
            self.relay.deleted(result.write.sent_outbox)
            self.relay.offer(result.write.outbox)
        if result.outputs:
            self.output_log.committed(result.outputs)
        if self.telemetry is None:
            return
        m = self.telemetry.metrics
        m.batch(sum(result.outcomes.values()), seconds)
        for (event_type, outcome), count in result.outcomes.items():
            m.event(event_type, outcome, count)
        rejections: Counter[str] = Counter()
        sla: Counter[tuple[str, str, str]] = Counter()  # one add per label set, not per output
        for out in result.outputs:
            kind = _SLA_KINDS.get(out.type)
            if kind is None:
                if out.type == INCIDENT_REJECTED:
                    rejections[out.data["reason"]] += 1
            elif kind == "failover":
                sla[("failover", "restore", out.data["severity"])] += 1
            else:
                sla[(kind, out.data["clock"], out.data["severity"])] += 1
        for reason, count in rejections.items():
            m.rejection(reason, count)
        for (kind, clock, severity), count in sla.items():
            m.sla_output(kind, clock, severity, count)
        for lateness in result.fired_lateness:
            m.timer_lateness(lateness)

    def _observe(self) -> None:
        if self.telemetry is None or self.loop is None:
            return
        loop, gauges = self.loop, self.gauges
        metrics = self.telemetry.metrics
        metrics.observe("incidents_timers_armed", lambda: float(len(loop.timers)))
        metrics.observe("incidents_outbox_backlog", lambda: float(gauges.get("backlog", 0)))
        metrics.observe(
            "incidents_consumer_lag",
            lambda: [Observation(lag, {"partition": str(p)}) for p, lag in self.lag.items()],
        )

    async def _sample_gauges(self, every: float = 3.0) -> None:
        """Refresh the scrape-time gauges that need I/O (scrapes must stay cheap and synchronous).

        Lag = end of each assigned partition - the next offset committed in Postgres: how far the
        engine's durable progress is behind, read with a client of its own (not the engine's).
        """
        from aiokafka import AIOKafkaConsumer

        probe = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                 **kafka_security(self.settings))  # fmt: skip
        started = False
        try:
            while True:
                try:
                    if not started:
                        await probe.start()
                        started = True
                    await self._sample_once(probe)
                except Exception as exc:  # a gauge must never take the engine down
                    log.debug("gauge sampling failed: %r", exc)
                self.output_log.tick()  # "suppressed K" of a log storm that no batch followed
                await asyncio.sleep(every)
        finally:
            if started:
                with contextlib.suppress(Exception):
                    await probe.stop()

    async def _sample_once(self, probe: Any) -> None:
        if self.store is None or self.loop is None:
            return
        self.gauges["backlog"] = await self.store.outbox_backlog()
        partitions = sorted(self.loop.assigned)
        if not partitions:
            self.lag = {}
            await probe.topics()  # still proves the cluster answers
            self.kafka_seen = asyncio.get_running_loop().time()
            return
        ends = await probe.end_offsets([TopicPartition(TOPIC_EVENTS, p) for p in partitions])
        self.kafka_seen = asyncio.get_running_loop().time()
        done = await self.store.committed_offsets(
            self.settings.incidents_consumer_group, TOPIC_EVENTS, partitions
        )
        self.lag = {tp.partition: max(0, end - done.get(tp.partition, 0)) for tp, end in ends.items()}

    def calendar_of(self, incident: Incident) -> Calendar | None:
        """The business calendar an incident's clocks run on (None before start or for a retired policy)."""
        if self.domain is None or incident.policy not in self.domain.policies:
            return None
        return self.domain.policies.get(incident.policy).calendar(incident.severity, incident.region)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A task of the engine that ends while it runs is a dead replica: say so (liveness fails)."""
        if task.cancelled() or not self.started:
            return
        log.critical("engine task %s ended (%r): this replica processes nothing; restart it",
                     task.get_name(), task.exception())  # fmt: skip

    def alive(self) -> bool:
        """False once a task of a started engine has ended (the loop, the relay): restart the process."""
        return not (self.started and any(task.done() for task in self.tasks))

    def ready(self) -> dict[str, Any]:
        """Readiness without I/O: started, alive, partitions assigned and their timers loaded."""
        loop_ready = self.loop is not None and self.loop.ready.is_set()
        ready = self.started and loop_ready and self.alive()
        return {"ready": bool(ready), **(self.loop.status() if self.loop else {})}

    async def readiness(self) -> dict[str, Any]:
        """`ready` plus Postgres answering a query and Kafka answering the lag probe lately."""
        status = self.ready()
        postgres = False
        if self.pool is not None:
            with contextlib.suppress(Exception):
                postgres = await asyncio.wait_for(self.pool.fetchval("SELECT 1"), 2.0) == 1
        kafka_age = asyncio.get_running_loop().time() - self.kafka_seen if self.kafka_seen else None
        kafka = kafka_age is not None and kafka_age < 30.0
        status.update(postgres=postgres, kafka=kafka, ready=status["ready"] and postgres and kafka)
        return status

    async def stop(self) -> None:
        """Finish the batch in flight, flush the outbox, leave the group, close connections."""
        self.started = False  # not ready from now on; the tasks ending now is no failure
        if self.loop is not None:
            self.loop.stop()
        if self.tasks:
            loop_task = self.tasks[0]
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(loop_task), 15)
            loop_task.cancel()
        if self.relay is not None:
            self.relay.stop()
            await self.relay.drain()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.output_log.tick(final=True)
        if self.broker is not None:
            await self.broker.stop()
        if self.producer is not None:
            await self.producer.stop()
        if self.pool is not None:
            await self.pool.close()
        self.started = False

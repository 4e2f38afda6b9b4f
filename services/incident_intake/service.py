"""The composition root: integrations, store, publisher, telemetry; `handle` is one notification."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from opentelemetry import trace

from incident_contracts import InputError
from incident_intake.channels.common import PayloadError
from incident_intake.integrations import Integration, Integrations, load_integrations
from incident_intake.publish import KafkaPublisher, Publisher, Unavailable, envelope
from incident_intake.settings import IntakeSettings
from incident_intake.store import PostgresStore, Store
from incident_intake.tracking import Signal, decide
from incident_platform.postgres import create_pool

__all__ = ["IntakeService", "Outcome"]

_log = logging.getLogger(__name__)
# What an unreachable or failing PostgreSQL raises: the sender should retry, as for Kafka.
_POSTGRES_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
)


@dataclass(frozen=True)
class Outcome:
    """What one alert key of a notification became."""

    key: str
    outcome: str  # reported | updated | acknowledged | restored | unchanged | ignored
    incident: str | None


class IntakeService:
    """Decides and publishes the events of each notification; owns the pool and the producer."""

    def __init__(
        self,
        settings: IntakeSettings,
        integrations: Integrations | None = None,
        store: Store | None = None,
        publisher: Publisher | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.tracer = tracer
        self.settings = settings
        self.integrations = integrations or load_integrations(settings.intake_integrations_file)
        self.store = store
        self.publisher = publisher
        self._pool: asyncpg.Pool | None = None
        self._kafka: KafkaPublisher | None = None

    async def start(self) -> None:
        """Migrate and open the pool (PostgreSQL must answer), start the producer (Kafka may come later)."""
        if self.store is None:
            from incident_intake.store import migrate_intake

            dsn = self.settings.database_url.get_secret_value()
            await migrate_intake(dsn)
            self._pool = await create_pool(dsn, **self.settings.pool_timeouts())  # type: ignore[arg-type]
            self.store = PostgresStore(self._pool)
        if self.publisher is None:
            self._kafka = KafkaPublisher(self.settings, self.settings.intake_kafka_timeout_ms, self.tracer)
            await self._kafka.start()
            self.publisher = self._kafka

    async def stop(self) -> None:
        """Close the producer and the pool."""
        if self._kafka is not None:
            await self._kafka.stop()
        if self._pool is not None:
            await self._pool.close()

    async def readiness(self) -> dict[str, str]:
        """`ok` or the problem, for Kafka and PostgreSQL."""
        checks = {}
        try:
            assert self.store is not None
            await self.store.ping()
            checks["postgres"] = "ok"
        except Exception as exc:
            checks["postgres"] = f"unreachable: {type(exc).__name__}"
        try:
            if self._kafka is not None:
                await self._kafka.ping()
            checks["kafka"] = "ok"
        except Unavailable as exc:
            checks["kafka"] = str(exc)
        return checks

    async def handle(self, integration: Integration, signals: list[Signal]) -> list[Outcome]:
        """Decide each signal against its key's state, publish the events, and only then remember.

        Raises Unavailable (answer 503) when Kafka or PostgreSQL could not do their part: nothing is
        remembered then, so the sender's retry decides the same events with the same ids."""
        assert self.store is not None and self.publisher is not None
        now = datetime.now(UTC)
        outcomes = []
        try:
            async with self.store.locked(integration.name, [s.key for s in signals]) as unit:
                events = []
                for signal in signals:
                    tracked = unit.changed.get(signal.key, unit.tracked[signal.key])
                    decision = decide(integration.name, integration.policy, signal, tracked, now)
                    unit.save(signal.key, decision.tracked)
                    try:
                        events += [envelope(e, integration.source) for e in decision.events]
                    except InputError as exc:
                        raise PayloadError(f"the alert makes no valid incident event: {exc}", 422) from None
                    outcomes.append(Outcome(signal.key, decision.outcome, decision.tracked.incident_id))
                if events:
                    await self.publisher.publish(events)
        except _POSTGRES_DOWN as exc:
            raise Unavailable(f"PostgreSQL is unreachable: {type(exc).__name__}") from None
        for outcome in outcomes:
            if outcome.outcome not in ("unchanged", "ignored"):
                _log.info(
                    "alert %s", outcome.outcome,
                    extra={"integration": integration.name, "incident_id": outcome.incident},
                )  # fmt: skip
        return outcomes

"""Composition of the people channels: store, publisher, SMTP server and phone webhooks, and how
`incidents intake` runs them beside the monitors' endpoints (`with_people`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import TracerProvider
from starlette.applications import Starlette

from incident_intake.email.handler import MailboxHandler
from incident_intake.email.server import start_smtp_server
from incident_intake.people_common import Publisher
from incident_intake.people_settings import PeopleSettings
from incident_intake.people_store import PeopleStore, migrate_people
from incident_intake.phone.status import EngineReader
from incident_intake.phone.webhooks import PhoneIntake, create_phone_app, phone_routes

__all__ = ["PeopleChannels", "start_people", "with_people"]

_log = logging.getLogger(__name__)


@dataclass
class PeopleChannels:
    """The running people channels: the SMTP server (when enabled) and the phone webhooks' app."""

    store: PeopleStore
    publisher: Publisher
    engine: EngineReader
    smtp: asyncio.Server | None
    mailbox: MailboxHandler
    phone: PhoneIntake
    phone_app: Starlette

    async def close(self) -> None:
        """Stop accepting mail, then close Kafka, the engine client and the pool."""
        if self.smtp is not None:
            self.smtp.close()
            await self.smtp.wait_closed()
        await self.publisher.close()
        await self.engine.close()
        await self.store.close()


async def start_people(
    settings: PeopleSettings, *, engine_transport: Any = None, tracer_provider: TracerProvider | None = None
) -> PeopleChannels:
    """Migrate, connect, and listen for mail when INTAKE_SMTP_ENABLED (the phone app is returned to be
    served or mounted)."""
    # aiosmtpd logs every SMTP command (recipients included) at INFO; its warnings still come through
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.getLogger().level))
    dsn = settings.database_url.get_secret_value()
    await migrate_people(dsn)
    store = await PeopleStore.connect(dsn, **settings.pool_timeouts())
    publisher = Publisher(settings, timeout=settings.intake_kafka_timeout_ms / 1000)
    token = settings.incidents_api_token
    engine = EngineReader(
        settings.intake_engine_url, token.get_secret_value() if token else None, transport=engine_transport
    )
    mailbox = MailboxHandler(settings, store, publisher, tracer_provider)
    phone = PhoneIntake(settings, store, publisher, engine, tracer_provider)
    try:
        smtp = await start_smtp_server(settings, mailbox) if settings.intake_smtp_enabled else None
    except BaseException:
        await publisher.close()
        await engine.close()
        await store.close()
        raise
    if smtp is not None:
        _log.info(
            "support mailbox listening",
            extra={"smtp": f"{settings.intake_smtp_host}:{settings.intake_smtp_port}"},
        )
    if settings.intake_phone_twilio_auth_token is None:
        _log.warning("INTAKE_PHONE_TWILIO_AUTH_TOKEN is not set: every phone webhook is refused (403)")
    return PeopleChannels(store, publisher, engine, smtp, mailbox, phone, create_phone_app(phone))


def with_people(
    app: Starlette, settings: PeopleSettings, tracer_provider: TracerProvider | None = None
) -> Starlette:
    """`app` (the intake's HTTP) also serving `POST /v1/voice/{line}` and `/v1/sms/{line}`, and running
    the people channels (and the SMTP server when enabled) for as long as its lifespan."""
    holder: dict[str, PeopleChannels] = {}

    def current() -> PhoneIntake | None:
        channels = holder.get("channels")
        return channels.phone if channels is not None else None

    app.router.routes[:0] = phone_routes(current)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(lifespan_app: Starlette) -> AsyncIterator[Any]:
        async with inner(lifespan_app) as state:
            holder["channels"] = await start_people(settings, tracer_provider=tracer_provider)
            try:
                yield state
            finally:
                channels = holder.pop("channels")
                await channels.close()

    app.router.lifespan_context = lifespan
    return app

"""Composition root of the people channels: store, publisher, SMTP server and phone webhooks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import uvicorn
from opentelemetry.trace import TracerProvider
from starlette.applications import Starlette

from incident_intake.email.handler import MailboxHandler
from incident_intake.email.server import start_smtp_server
from incident_intake.people_common import Publisher
from incident_intake.people_settings import PeopleSettings
from incident_intake.people_store import PeopleStore, migrate_people
from incident_intake.phone.status import EngineReader
from incident_intake.phone.webhooks import PhoneIntake, create_phone_app

__all__ = ["PeopleChannels", "serve_people", "start_people"]

_log = logging.getLogger(__name__)


@dataclass
class PeopleChannels:
    """The running people channels: the SMTP server and the phone webhooks' app."""

    store: PeopleStore
    publisher: Publisher
    engine: EngineReader
    smtp: asyncio.Server
    mailbox: MailboxHandler
    phone: PhoneIntake
    phone_app: Starlette

    async def close(self) -> None:
        """Stop accepting mail, then close Kafka, the engine client and the pool."""
        self.smtp.close()
        await self.smtp.wait_closed()
        await self.publisher.close()
        await self.engine.close()
        await self.store.close()


async def start_people(
    settings: PeopleSettings, *, engine_transport: Any = None, tracer_provider: TracerProvider | None = None
) -> PeopleChannels:
    """Migrate, connect, and listen for mail (the phone app is returned to be served or mounted)."""
    dsn = settings.database_url.get_secret_value()
    await migrate_people(dsn)
    store = await PeopleStore.connect(dsn, **settings.pool_timeouts())
    publisher = Publisher(settings, timeout=settings.intake_kafka_timeout_s)
    token = settings.incidents_api_token
    engine = EngineReader(
        settings.intake_engine_url, token.get_secret_value() if token else None, transport=engine_transport
    )
    mailbox = MailboxHandler(settings, store, publisher, tracer_provider)
    smtp = await start_smtp_server(settings, mailbox)
    phone = PhoneIntake(settings, store, publisher, engine, tracer_provider)
    return PeopleChannels(store, publisher, engine, smtp, mailbox, phone, create_phone_app(phone))


async def serve_people(settings: PeopleSettings) -> None:
    """Run the SMTP server and the phone webhooks until cancelled (Ctrl-C)."""
    channels = await start_people(settings)
    _log.info(
        "people intake listening",
        extra={
            "smtp": f"{settings.intake_smtp_host}:{settings.intake_smtp_port}",
            "phone_http": f"{settings.intake_phone_http_host}:{settings.intake_phone_http_port}",
        },
    )
    if settings.intake_phone_twilio_auth_token is None:
        _log.warning("INTAKE_PHONE_TWILIO_AUTH_TOKEN is not set: every phone webhook is refused (403)")
    config = uvicorn.Config(
        channels.phone_app, host=settings.intake_phone_http_host, port=settings.intake_phone_http_port,
        log_config=None, access_log=False,
    )  # fmt: skip
    server = uvicorn.Server(config)
    try:
        await server.serve()
    finally:
        with contextlib.suppress(Exception):
            await channels.close()

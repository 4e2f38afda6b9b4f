"""The SMTP server of the support mailbox on the running event loop (STARTTLS and AUTH when configured)."""

from __future__ import annotations

import asyncio
import hmac
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from incident_intake.email.handler import MailboxHandler
from incident_intake.people_settings import EmailSettings

__all__ = ["start_smtp_server"]


def _tls_context(settings: EmailSettings) -> ssl.SSLContext | None:
    if settings.intake_smtp_tls_certfile is None:
        if settings.intake_smtp_require_starttls:
            raise ValueError("INTAKE_SMTP_REQUIRE_STARTTLS needs INTAKE_SMTP_TLS_CERTFILE and _KEYFILE")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.intake_smtp_tls_certfile, settings.intake_smtp_tls_keyfile)
    return context


def _authenticator(settings: EmailSettings) -> Any:
    users = {
        name: secret.get_secret_value().encode() for name, secret in settings.intake_smtp_auth_users.items()
    }

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        expected = users.get(auth_data.login.decode("utf-8", "replace"))
        ok = expected is not None and hmac.compare_digest(expected, auth_data.password)
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself

    return authenticate


async def start_smtp_server(settings: EmailSettings, handler: MailboxHandler) -> asyncio.Server:
    """Listen on INTAKE_SMTP_HOST:PORT; every connection is an aiosmtpd `SMTP` session."""
    loop = asyncio.get_running_loop()
    tls = _tls_context(settings)
    auth = bool(settings.intake_smtp_auth_users)

    def session() -> SMTP:
        return SMTP(
            handler,
            hostname=settings.intake_smtp_hostname,
            data_size_limit=settings.intake_smtp_max_message_bytes,
            tls_context=tls,
            require_starttls=settings.intake_smtp_require_starttls,
            authenticator=_authenticator(settings) if auth else None,
            auth_required=auth,
            auth_require_tls=tls is not None,
            loop=loop,
        )

    return await loop.create_server(session, settings.intake_smtp_host, settings.intake_smtp_port)

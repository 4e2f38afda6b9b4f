"""One delivery attempt per destination type, and what its answer means: delivered, retry (when),
or a permanent failure (dead-lettered at once)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from incident_notifier.config import ConfigError, Destination, reveal
from incident_notifier.messages import email_message, pagerduty_events, slack_message

DELIVERED = "delivered"
RETRY = "retry"
PERMANENT = "permanent"

DEFAULT_PAGERDUTY_URL = "https://events.pagerduty.com/v2/enqueue"


@dataclass(frozen=True)
class Outcome:
    status: str  # delivered | retry | permanent
    error: str | None = None
    retry_after: float | None = None  # seconds, from the receiver's Retry-After


class RefusedAddress(Exception):
    """The destination resolves to an address the configuration does not allow."""


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """`Retry-After` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def classify_http(status: int, headers: Any, body: str = "") -> Outcome:
    """2xx delivered; 408, 429 and 5xx retried (Retry-After honoured); a redirect, 410 and every other
    4xx are permanent (retrying cannot help)."""
    if 200 <= status < 300:
        return Outcome(DELIVERED)
    detail = f"HTTP {status}" + (f": {body.strip()[:200]}" if body.strip() else "")
    if status in (408, 429) or status >= 500:
        return Outcome(RETRY, detail, retry_after_seconds(headers.get("retry-after")))
    if 300 <= status < 400:
        return Outcome(PERMANENT, f"{detail} (redirect to {headers.get('location', '?')}; not followed)")
    return Outcome(PERMANENT, detail)


def _refused(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    return bool(
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


async def check_address(host: str, port: int, allow_private: bool) -> None:
    """Refuse a host that resolves to a private, loopback or link-local address (unless allowed)."""
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
    for info in infos:
        address = str(info[4][0])
        if _refused(address):
            raise RefusedAddress(
                f"{host} resolves to {address}, a private/loopback address "
                "(set INCIDENTS_NOTIFIER_ALLOW_PRIVATE=true to allow it)"
            )


class Senders:
    """Attempts deliveries; shares one HTTP client (connection pools) between destinations."""

    def __init__(self, *, timeout: float, allow_private: bool, links_url: str | None) -> None:
        self.timeout = timeout
        self.allow_private = allow_private
        self.links_url = links_url
        self.http = httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False)

    async def close(self) -> None:
        await self.http.aclose()

    async def attempt(self, destination: Destination, event: dict[str, Any]) -> Outcome:
        """One attempt, within the timeout; never raises for the receiver's or the network's faults."""
        try:
            async with asyncio.timeout(self.timeout):
                if destination.type == "email":
                    return await self._email(destination, event)
                return await self._http(destination, event)
        except RefusedAddress as exc:
            return Outcome(PERMANENT, str(exc))
        except ConfigError as exc:
            return Outcome(RETRY, str(exc))  # a secret not readable yet: fixable without losing it
        except TimeoutError:
            return Outcome(RETRY, f"no answer within {self.timeout:g} s")
        except (httpx.HTTPError, OSError) as exc:
            return Outcome(RETRY, f"{type(exc).__name__}: {exc}"[:500])
        except Exception as exc:  # e.g. a secret that is no whsec_ value: counted, dead-lettered in the end
            return Outcome(RETRY, f"{type(exc).__name__}: {exc}"[:500])

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        parts = urlsplit(url)
        await check_address(
            parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80), self.allow_private
        )
        response = await self.http.post(url, content=body, headers=headers)
        return classify_http(response.status_code, response.headers, response.text)

    async def _http(self, destination: Destination, event: dict[str, Any]) -> Outcome:
        if destination.type == "webhook":
            from standardwebhooks import Webhook

            assert destination.url is not None
            body = orjson.dumps(event).decode()
            msg_id = str(event["id"])
            attempt_time = datetime.now(UTC)  # the attempt's, never the event's time
            signatures = " ".join(
                Webhook(secret.value()).sign(msg_id, attempt_time, body) for secret in destination.secrets
            )
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(int(attempt_time.timestamp())),
                "webhook-signature": signatures,
            }
            return await self._post(reveal(destination.url), body.encode(), headers)
        if destination.type == "slack":
            assert destination.url is not None
            payload = orjson.dumps(slack_message(event, self.links_url))
            return await self._post(reveal(destination.url), payload, {"content-type": "application/json"})
        if destination.type == "pagerduty":
            assert destination.routing_key is not None
            url = reveal(destination.url) if destination.url else DEFAULT_PAGERDUTY_URL
            outcome = Outcome(DELIVERED)  # a state change that stops no clock resolves nothing
            for page in pagerduty_events(event, destination.routing_key.value(), self.links_url):
                # several resolves: each is idempotent in PagerDuty, so a retry resends them all
                outcome = await self._post(url, orjson.dumps(page), {"content-type": "application/json"})
                if outcome.status != DELIVERED:
                    return outcome
            return outcome
        return Outcome(PERMANENT, f"unknown destination type {destination.type!r}")

    async def _email(self, destination: Destination, event: dict[str, Any]) -> Outcome:
        import aiosmtplib

        smtp = destination.smtp
        host = str(smtp["host"])
        port = int(smtp.get("port", 465 if smtp.get("tls") else 587 if smtp.get("starttls", True) else 25))
        await check_address(host, port, self.allow_private)
        assert destination.sender is not None
        message = email_message(event, destination.name, destination.sender, destination.to, self.links_url)
        password = smtp.get("password")
        try:
            await aiosmtplib.send(
                message,
                hostname=host,
                port=port,
                use_tls=bool(smtp.get("tls", False)),
                start_tls=bool(smtp.get("starttls", False)),
                username=smtp.get("username"),
                password=reveal(password) if password is not None else None,
                timeout=self.timeout,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            detail = "; ".join(f"{r.recipient}: SMTP {r.code} {r.message}" for r in exc.recipients)[:500]
            return Outcome(PERMANENT if codes and all(code >= 500 for code in codes) else RETRY, detail)
        except aiosmtplib.SMTPResponseException as exc:
            detail = f"SMTP {exc.code}: {exc.message}"[:500]
            return Outcome(PERMANENT if 500 <= exc.code < 600 else RETRY, detail)
        except aiosmtplib.SMTPException as exc:
            return Outcome(RETRY, f"{type(exc).__name__}: {exc}"[:500])
        return Outcome(DELIVERED)

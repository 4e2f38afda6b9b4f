"""One delivery attempt per destination type, and what its answer means: delivered, retry (when),
or a permanent failure (dead-lettered at once)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpcore
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
    """Anything not globally routable: private, loopback, link-local, CGNAT (100.64.0.0/10, where
    some clouds serve their metadata), reserved, documentation, multicast, unspecified…"""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


async def resolve(host: str, port: int) -> list[str]:
    """The addresses of `host` (the system resolver), in its order."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc.strerror}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def checked_addresses(host: str, port: int, allow_private: bool) -> list[str]:
    """Resolve `host` once and refuse it when any of its addresses is not public (unless allowed):
    the caller connects to these very addresses, so a second answer (DNS rebinding) cannot slip in."""
    addresses = await resolve(host, port)
    if not allow_private:
        for address in addresses:
            if _refused(address):
                raise RefusedAddress(
                    f"{host} resolves to {address}, not a public address "
                    "(set INCIDENTS_NOTIFIER_ALLOW_PRIVATE=true to allow it)"
                )
    return addresses


async def check_address(host: str, port: int, allow_private: bool) -> None:
    """Refuse a host that resolves to a private, loopback, link-local or other non-public address."""
    await checked_addresses(host, port, allow_private)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, but every TCP connection goes to an address that was resolved and
    checked for it (`checked_addresses`); TLS still verifies and sends SNI for the URL's host name, and
    the Host header stays the URL's. Pooled keep-alive connections were all made this way."""

    def __init__(self, allow_private: bool, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.allow_private = allow_private
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await checked_addresses(host, port, self.allow_private)
        error: Exception = OSError(f"cannot resolve {host}")
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout, OSError) as exc:
                error = exc
        raise error

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise RefusedAddress("unix sockets are not a destination")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


async def pinned_socket(host: str, port: int, allow_private: bool) -> socket.socket:
    """A TCP socket connected to a checked address of `host` (for SMTP: aiosmtplib's `sock`)."""
    loop = asyncio.get_running_loop()
    error: Exception = OSError(f"cannot resolve {host}")
    for address in await checked_addresses(host, port, allow_private):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (address, port))
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


class Senders:
    """Attempts deliveries; shares one HTTP client (connection pools) between destinations."""

    def __init__(self, *, timeout: float, allow_private: bool, links_url: str | None) -> None:
        self.timeout = timeout
        self.allow_private = allow_private
        self.links_url = links_url
        transport = httpx.AsyncHTTPTransport(trust_env=False)
        # httpx has no resolver hook: its connection pool's network backend is where a connection's
        # address is chosen, so that is where the checked address is pinned.
        transport._pool._network_backend = PinnedBackend(allow_private)
        self.http = httpx.AsyncClient(
            transport=transport, timeout=timeout, follow_redirects=False, trust_env=False
        )

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
        # the address is checked (and pinned) when the connection is made: PinnedBackend
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
        assert destination.sender is not None
        message = email_message(event, destination.name, destination.sender, destination.to, self.links_url)
        password = smtp.get("password")
        sock = await pinned_socket(host, port, self.allow_private)  # the checked address, no 2nd lookup
        try:
            await aiosmtplib.send(
                message,
                hostname=host,  # TLS: SNI and certificate checked for the host name
                sock=sock,
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
        finally:
            sock.close()
        return Outcome(DELIVERED)

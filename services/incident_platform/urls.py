"""The one check of a configured URL (a notifier destination, the intake's own addresses)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

__all__ = ["is_loopback", "url_problem"]

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}


def is_loopback(host: str) -> bool:
    """A loopback host: `localhost` (any case) or a loopback address."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_problem(url: str, *, https_only: bool = False) -> str | None:
    """What is wrong with `url` as an address to call (None when it is fine): the scheme must be http
    or https and there must be a host; with `https_only`, http is accepted only for a loopback host (a
    local stand-in, e.g. the demo's sink). The message never repeats the URL (it may hold a secret)."""
    text = url.strip()
    if text != url or any(c.isspace() for c in text):
        return "is not a URL: it contains white space"
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a port that is no number or out of range
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if parts.scheme not in ("http", "https"):
        shown = f"'{parts.scheme}:'" if parts.scheme else "none"
        return f"is not an http(s) URL (scheme {shown})"
    if not parts.hostname:
        return "has no host"
    if https_only and parts.scheme != "https" and not is_loopback(parts.hostname):
        return "must be https (http only for a loopback host, a local stand-in)"
    return None

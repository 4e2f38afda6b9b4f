"""Grafana alerting's webhook contact point: Alertmanager's payload plus `orgId`, `title`, `message`,
dashboard/panel URLs and values; its optional HMAC-SHA256 signature is checked when a secret is set.

Grafana signs the raw body, or `timestamp + ":" + body` when a timestamp header is configured, and
sends the hex digest in `X-Grafana-Alerting-Signature` (the header name is configurable).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from incident_intake.channels import alertmanager
from incident_intake.integrations import Integration
from incident_intake.tracking import Signal

__all__ = ["SignatureError", "check_signature", "signals"]


class SignatureError(ValueError):
    """The HMAC signature is missing, stale or wrong (401)."""


def check_signature(
    integration: Integration, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> None:
    """Raise SignatureError unless `body` carries the integration's HMAC signature (no-op without one)."""
    if integration.hmac_secret is None:
        return
    if not integration.hmac_secret:  # never verify with an empty key (anyone can compute it)
        raise SignatureError("no HMAC secret is configured for this integration")
    signature = headers.get(integration.hmac_header.lower()) or headers.get(integration.hmac_header)
    if not signature:
        raise SignatureError(f"the {integration.hmac_header} header is missing")
    signed = body
    if integration.hmac_timestamp_header:
        stamp = headers.get(integration.hmac_timestamp_header.lower())
        if not stamp:
            raise SignatureError(f"the {integration.hmac_timestamp_header} header is missing")
        try:
            age = abs((time.time() if now is None else now) - int(stamp))
        except ValueError:
            raise SignatureError(f"{integration.hmac_timestamp_header}: not a Unix timestamp") from None
        if age > integration.hmac_max_age_seconds:
            raise SignatureError(f"{integration.hmac_timestamp_header}: the signature is {age:.0f} s old")
        signed = stamp.encode() + b":" + body
    expected = hmac.new(integration.hmac_secret.encode(), signed, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise SignatureError(f"the {integration.hmac_header} signature does not match the body")


def signals(integration: Integration, body: Any, now: datetime) -> list[Signal]:
    """The signals of one Grafana notification (the Alertmanager rules apply)."""
    return alertmanager.signals(integration, body, now)

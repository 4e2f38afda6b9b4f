"""Kafka client arguments shared by the engine, the relay and the publisher."""

from __future__ import annotations

from typing import Any

from incident_engine.config import Settings


def kafka_security(settings: Settings) -> dict[str, Any]:
    """aiokafka security arguments from the settings (SASL/TLS), empty for plaintext."""
    hook = getattr(settings, "kafka_client_security", None)
    return hook() if callable(hook) else {}

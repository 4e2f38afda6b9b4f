"""Kafka client arguments and producers shared by every service (security from settings)."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer

from incident_platform.settings import PlatformSettings

__all__ = ["durable_producer", "kafka_security"]


def kafka_security(settings: PlatformSettings) -> dict[str, Any]:
    """aiokafka security arguments (SASL, TLS) from the settings; empty for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return {}
    args: dict[str, Any] = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        args["ssl_context"] = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        )
    if protocol.startswith("SASL"):
        if not settings.kafka_sasl_mechanism or not settings.kafka_sasl_username:
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={protocol} needs KAFKA_SASL_MECHANISM and KAFKA_SASL_USERNAME"
            )
        password = settings.kafka_sasl_password
        args.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=password.get_secret_value() if password else None,
        )
    return args


def durable_producer(settings: PlatformSettings, **overrides: Any) -> AIOKafkaProducer:
    """A producer whose acknowledged sends are durable: `acks=all`, idempotent, bounded waits.

    A channel answers its sender (HTTP 2xx, SMTP 250) only after `send_and_wait` returned, so an
    acknowledged event is on every in-sync replica. `request_timeout_ms` bounds how long a send may
    wait for an unreachable cluster before it raises (the sender then gets a retryable error)."""
    args: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 0,
        "request_timeout_ms": 10_000,
        **kafka_security(settings),
    }
    args.update(overrides)
    return AIOKafkaProducer(**args)

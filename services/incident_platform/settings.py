"""The settings every service shares (Kafka, PostgreSQL, logs), from the environment or secret files."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["PlatformSettings", "without_credentials"]


def without_credentials(dsn: str) -> str:
    """A DSN fit to print: user and password dropped (`postgresql://u:p@h/db` -> `postgresql://h/db`)."""
    return re.sub(r"//[^@/]*@", "//", dsn)


class PlatformSettings(BaseSettings):
    """Kafka, PostgreSQL and log settings; names are the environment variables (case-insensitive).

    Each service subclasses it with its own settings (and its own default `database_url`)."""

    # Secrets may also come from files: INCIDENTS_SECRETS_DIR names a folder holding one file per
    # setting (e.g. `database_url`, `kafka_sasl_password`), as Kubernetes mounts a Secret.
    model_config = SettingsConfigDict(
        env_prefix="",
        extra="ignore",
        populate_by_name=True,
        secrets_dir=os.environ.get("INCIDENTS_SECRETS_DIR") or None,
    )

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password. Never logged.")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle (PEM) to verify the brokers (SSL).")
    kafka_ssl_certfile: Path | None = Field(None, description="Client certificate (PEM) for mutual TLS.")
    kafka_ssl_keyfile: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    database_url: SecretStr = Field(
        SecretStr("postgresql://postgres@127.0.0.1:5432/incidents"),
        description="PostgreSQL DSN (asyncpg). Credentials are never logged.",
    )
    incidents_pg_connect_timeout_ms: int = Field(
        10_000, description="Longest wait to open a PostgreSQL connection (connect and TLS handshake)."
    )
    incidents_pg_command_timeout_ms: int = Field(
        30_000,
        description="Client-side limit on each PostgreSQL call: a half-open connection fails the batch "
        "(retried) instead of holding it, and the partitions, through a rebalance. 0 = none.",
    )
    incidents_pg_statement_timeout_ms: int = Field(
        25_000,
        description="Server-side `statement_timeout` of the engine's sessions (below the command timeout, "
        "so the server cancels first and says why). 0 = none.",
    )
    incidents_pg_idle_in_transaction_timeout_ms: int = Field(
        60_000,
        description="Server-side `idle_in_transaction_session_timeout`: the transaction of a vanished "
        "client ends and releases its locks. 0 = none.",
    )
    incidents_log_level: str = Field("INFO", description="Log level.")

    def pool_timeouts(self) -> dict[str, object]:
        """`incident_platform.postgres.create_pool` keywords from the `INCIDENTS_PG_*` timeouts."""
        from incident_platform.postgres import pool_timeouts

        return pool_timeouts(
            self.incidents_pg_connect_timeout_ms,
            self.incidents_pg_command_timeout_ms,
            self.incidents_pg_statement_timeout_ms,
            self.incidents_pg_idle_in_transaction_timeout_ms,
        )

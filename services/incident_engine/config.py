"""Engine configuration from environment variables (pydantic-settings)."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


def without_credentials(dsn: str) -> str:
    """A DSN fit to print: user and password dropped (`postgresql://u:p@h/db` -> `postgresql://h/db`)."""
    return re.sub(r"//[^@/]*@", "//", dsn)


class Settings(BaseSettings):
    """Every knob of the engine; names are the environment variables (case-insensitive)."""

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
    incidents_consumer_group: str = Field("incident-engine", description="Kafka consumer group.")
    incidents_instance_id: str | None = Field(
        None,
        description="Static group membership id (e.g. the StatefulSet pod name): a restarted replica gets "
        "its partitions back at once instead of after the session timeout. Unique per replica.",
    )
    incidents_session_timeout_ms: int = Field(
        6000, description="Consumer session timeout: how soon a dead replica's partitions move."
    )
    incidents_default_policy: str = Field("livepro-1", description="Policy for incidents that name none.")
    incidents_policy_dir: Path = Field(REPO_ROOT / "policies", description="Folder of policy YAML files.")
    incidents_http_host: str = Field("0.0.0.0", description="Bind address of the HTTP server.")
    incidents_http_port: int = Field(8080, description="Port of the HTTP server (probes, metrics, read API).")
    incidents_api_token: SecretStr | None = Field(
        None, description="Bearer token of the read API (`Authorization: Bearer <token>`)."
    )
    incidents_api_open: bool = Field(
        False,
        description="Open the read API without a token (local development only). Without a token and "
        "without this, `/incidents` answers 401; probes and metrics stay open.",
    )
    incidents_archive_dir: Path | None = Field(
        None,
        description="Folder of the event-log archive (`incidents db archive`); `replay` and `report` "
        "read its files before the database.",
    )
    incidents_batch_max: int = Field(
        500, ge=1, description="Most input messages processed in one transaction."
    )
    incidents_batch_timeout_ms: int = Field(50, ge=1, description="Longest wait to fill a batch.")
    incidents_max_message_bytes: int = Field(
        1_048_576, description="Input messages larger than this are dead-lettered."
    )
    incidents_max_clock_skew: timedelta = Field(
        timedelta(minutes=5),
        description="Input events dated further ahead of the engine clock are dead-lettered (`schema`): "
        "a wrong upstream clock must not fire every SLA clock at once. ISO 8601 duration or seconds.",
    )
    incidents_max_event_age: timedelta = Field(
        timedelta(days=30),
        description="Input events older than this are dead-lettered (`schema`), e.g. an unset 1970 "
        "timestamp. For a one-off backfill of older history raise it on one replica for the duration; "
        "`incidents simulate` evaluates old files without it. ISO 8601 duration or seconds.",
    )
    incidents_topic_partitions: int = Field(6, description="Partitions when the engine creates its topics.")
    incidents_breach_grace_ms: int = Field(
        5000,
        ge=0,
        description="Breaches and failover orders wait this long past their due moment for evidence "
        "still in flight (an acknowledgement stamped in time, not yet read); `due_at` stays the true "
        "moment. Warnings do not wait. Evidence read later still retracts the breach.",
    )
    incidents_event_time_allowance_ms: int = Field(
        5000,
        ge=0,
        description="While a partition is behind (a backlog, a lagging consumer), SLA time follows the "
        "event times read from it, less this allowance for channels that deliver out of order.",
    )
    incidents_log_level: str = Field("INFO", description="Log level.")

"""Engine configuration from environment variables (pydantic-settings)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from pydantic import Field, SecretStr

from incident_platform.settings import PlatformSettings, without_credentials

__all__ = ["REPO_ROOT", "Settings", "without_credentials"]

REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(PlatformSettings):
    """Every knob of the engine; names are the environment variables (case-insensitive).

    Kafka, PostgreSQL and log settings come from `PlatformSettings`, shared by every service."""

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
    incidents_console_user_header: str | None = Field(
        None,
        description="Request header naming the signed-in user, set by an authenticating reverse proxy in "
        "front of the console (e.g. `X-Forwarded-User`): with it the console asks no token. Only when "
        "every request comes through that proxy, which must drop the header from clients.",
    )
    incidents_console_cookie_secure: bool | None = Field(
        None,
        description="`Secure` on the console's cookies. Unset: always, except for a loopback host over "
        "plain http (`make run` on a laptop); TLS usually ends at a proxy, so the engine's own scheme says "
        "nothing. `false` (only when the engine itself serves https) for plain http on a trusted network.",
    )
    incidents_trace_ui_url: str | None = Field(
        None,
        description="Link of a trace in the trace UI, `{trace_id}` replaced; the console links each "
        "event of a timeline to its trace (e.g. `http://127.0.0.1:16686/trace/{trace_id}` for Jaeger).",
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

"""The notifier's settings: the shared platform ones plus delivery tuning (environment or secret files)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from incident_contracts.constants import TOPIC_NOTIFICATIONS_DEAD
from incident_platform.settings import PlatformSettings

DEAD_LETTER_TOPIC = TOPIC_NOTIFICATIONS_DEAD


class NotifierSettings(PlatformSettings):
    """`incidents notify` settings; names are the environment variables (case-insensitive)."""

    incidents_notifier_config: Path = Field(
        Path("deploy/local/notifier.yaml"),
        description="Routing and destinations (YAML, validated by its JSON Schema; see the README).",
    )
    incidents_notifier_group: str = Field(
        "incident-notifier", description="Kafka consumer group of the notifier."
    )
    incidents_notifier_topics: str = Field(
        "incidents.breaches", description="Topics the notifier consumes (comma-separated)."
    )
    incidents_notifier_start: Literal["earliest", "latest"] = Field(
        "earliest",
        description="Where a new consumer group starts: `earliest` (every retained output) or `latest`.",
    )
    incidents_notifier_dead_letter_topic: str = Field(
        DEAD_LETTER_TOPIC, description="Where deliveries that failed for good go, with their last error."
    )
    incidents_notifier_http_host: str = Field("0.0.0.0", description="Bind address of the notifier's probes.")
    incidents_notifier_http_port: int = Field(8082, description="Port of `/healthz`, `/readyz`, `/metrics`.")
    incidents_notifier_max_attempts: int = Field(
        8,
        ge=1,
        description="Attempts of one delivery before it is dead-lettered (permanent failures: at once).",
    )
    incidents_notifier_backoff_base_ms: int = Field(
        1_000,
        ge=1,
        description="First retry delay; doubles each attempt, with jitter (a random half to all of it).",
    )
    incidents_notifier_backoff_max_ms: int = Field(300_000, ge=1, description="Longest retry delay.")
    incidents_notifier_retry_after_max_ms: int = Field(
        3_600_000,
        ge=0,
        description="Longest `Retry-After` honoured (a longer one is cut to this); a `Retry-After` is a "
        "floor on the backoff, never shorter than it.",
    )
    incidents_notifier_timeout_ms: int = Field(
        10_000, ge=1, description="Time limit of one delivery attempt."
    )
    incidents_notifier_lease_ms: int = Field(
        30_000,
        ge=1,
        description="A claimed delivery is retried after this long if its notifier died mid-attempt "
        "(above the attempt timeout).",
    )
    incidents_notifier_poll_ms: int = Field(
        500, ge=1, description="How often workers look for due deliveries."
    )
    incidents_notifier_concurrency: int = Field(
        4, ge=1, description="Attempts in flight per destination (a slow destination never holds the others)."
    )
    incidents_notifier_allow_private: bool = Field(
        False,
        description="Allow destinations on addresses that are not public: private, loopback, link-local, "
        "CGNAT… (tests, local runs).",
    )
    incidents_notifier_links_url: str | None = Field(
        None,
        description="Where messages link an incident: a URL with `{id}` (e.g. the console's "
        "`https://host/console/incident?id={id}`), or a base URL that gets `/incidents/<id>` (the read API).",
    )

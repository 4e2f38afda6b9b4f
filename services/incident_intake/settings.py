"""The intake's settings: the platform's (Kafka, PostgreSQL, logs) and its own `INTAKE_*`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from incident_platform.settings import PlatformSettings

__all__ = ["IntakeSettings"]


class IntakeSettings(PlatformSettings):
    """Environment variables of `incidents intake` (names are case-insensitive)."""

    intake_http_host: str = Field("127.0.0.1", description="Bind address of the intake's HTTP server.")
    intake_http_port: int = Field(8081, description="HTTP port of the intake.")
    intake_integrations_file: Path = Field(
        Path("deploy/local/integrations.yaml"),
        description="YAML file naming the monitors' integrations (kind, region, severity map, policy, "
        "secret); validated by a JSON Schema at start.",
    )
    intake_max_body_bytes: int = Field(
        512 * 1024, description="Largest request body accepted (413 above; PagerDuty's own limit is 512 KB)."
    )
    intake_kafka_timeout_ms: int = Field(
        10_000,
        description="Longest wait for Kafka to acknowledge an alert's events before answering 503 "
        "(the sender retries).",
    )
    intake_retry_after_seconds: int = Field(
        30, description="`Retry-After` of a 503 (Kafka or PostgreSQL unreachable: the sender retries)."
    )


def markdown_table() -> str:
    """The README table of the intake's own variables (the shared ones are the engine's table)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in IntakeSettings.model_fields.items():
        if name in PlatformSettings.model_fields:
            continue
        rows.append(f"| `{name.upper()}` | `{field.default}` | {field.description or ''} |")
    return "\n".join(rows)


START, END = "<!-- intake-config:start -->", "<!-- intake-config:end -->"


def readme_with_table(text: str) -> str:
    """README text with the intake's variable table regenerated between its markers."""
    import re

    block = f"{START}\n{markdown_table()}\n{END}"
    return re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _m: block, text, flags=re.S)


if __name__ == "__main__":  # python -m incident_intake.settings README.md: regenerate the table
    import sys

    readme = Path(sys.argv[1])
    readme.write_text(readme_with_table(readme.read_text()))

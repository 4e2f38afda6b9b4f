"""Settings of the email and phone channels (environment variables, names as written, any case)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator

from incident_platform.settings import PlatformSettings

__all__ = ["EmailSettings", "Mailbox", "PeopleSettings", "PhoneLine", "PhoneSettings", "settings_table"]

Severity = Literal["critical", "high", "low"]
Region = Literal["au", "us", "uk"]


class Mailbox(BaseModel):
    """A support address: what a new incident mailed to it gets unless a `+tag` says otherwise."""

    region: Region | None = None
    severity: Severity | None = None


class EmailSettings(PlatformSettings):
    """The SMTP server of the intake (INTAKE_SMTP_*)."""

    intake_smtp_enabled: bool = Field(
        False, description="Run the support mailbox's SMTP server in `incidents intake`."
    )
    intake_smtp_host: str = Field("127.0.0.1", description="Bind address of the SMTP server.")
    intake_smtp_port: int = Field(2525, description="Port of the SMTP server (MX or forwarding target).")
    intake_smtp_hostname: str = Field("intake.localdomain", description="Name in the SMTP greeting.")
    intake_smtp_mailboxes: dict[str, Mailbox] = Field(
        default_factory=lambda: {"support@localhost": Mailbox()},
        description='Support addresses as JSON, e.g. {"support-au@example.com": {"region": "au"}, '
        '"support@example.com": {}}. `support+critical@…` / `support+us@…` set severity / region.',
    )

    @field_validator("intake_smtp_mailboxes")
    @classmethod
    def _lower_case_addresses(cls, value: dict[str, Mailbox]) -> dict[str, Mailbox]:
        """Addresses compare in lower case (as the recipients are read)."""
        return {address.strip().lower(): mailbox for address, mailbox in value.items()}

    intake_smtp_default_severity: Severity = Field(
        "high", description="Severity when neither address nor tag says."
    )
    intake_smtp_default_region: Region = Field("au", description="Region when neither address nor tag says.")
    intake_smtp_max_message_bytes: int = Field(
        1_048_576, description="Largest message accepted (SIZE; 552 above)."
    )
    intake_smtp_tls_certfile: Path | None = Field(
        None, description="PEM certificate chain: enables STARTTLS."
    )
    intake_smtp_tls_keyfile: Path | None = Field(None, description="PEM private key of the certificate.")
    intake_smtp_require_starttls: bool = Field(
        False, description="Refuse mail before STARTTLS (needs the cert)."
    )
    intake_smtp_auth_users: dict[str, SecretStr] = Field(
        default_factory=dict,
        description='AUTH PLAIN/LOGIN users as JSON {"user": "password"}: when set, AUTH is required '
        "(and only offered after STARTTLS when a certificate is configured), for a relay that forwards "
        "the mailbox; leave empty when the intake is the MX.",
    )
    intake_kafka_timeout_ms: int = Field(
        10_000,
        description="Longest wait for Kafka to acknowledge the events before answering 503 / SMTP 451 "
        "(the sender retries).",
    )


class PhoneLine(BaseModel):
    """A phone line: its number, region, time zone for spoken times, and the provider's base URL."""

    number: str
    region: Region
    timezone: str
    public_url: str = Field(description="Base URL the provider calls (signatures are computed over it).")


def _default_lines() -> dict[str, PhoneLine]:
    base = "http://127.0.0.1:8081"  # the intake's HTTP (INTAKE_HTTP_PORT)
    return {
        "au": PhoneLine(number="+61200000000", region="au", timezone="Australia/Sydney", public_url=base),
        "us": PhoneLine(number="+12000000000", region="us", timezone="America/New_York", public_url=base),
        "uk": PhoneLine(number="+442000000000", region="uk", timezone="Europe/London", public_url=base),
    }


class PhoneSettings(PlatformSettings):
    """The phone webhooks of the intake (INTAKE_PHONE_*), served on the intake's HTTP."""

    intake_phone_lines: dict[str, PhoneLine] = Field(
        default_factory=_default_lines,
        description='Lines as JSON: {"au": {"number": "+61…", "region": "au", "timezone": '
        '"Australia/Sydney", "public_url": "https://intake.example.com"}, …}.',
    )
    intake_phone_twilio_auth_token: SecretStr | None = Field(
        None, description="Twilio auth token (signature key). Without it every webhook is refused (403)."
    )
    intake_phone_sms_severity: Severity = Field("high", description="Severity of `NEW <text>` by SMS.")
    intake_engine_url: str = Field(
        "http://127.0.0.1:8080", description="The engine's HTTP (read API) for SMS STATUS."
    )
    incidents_api_token: SecretStr | None = Field(None, description="Bearer token of the engine's read API.")
    intake_kafka_timeout_ms: int = Field(
        10_000,
        description="Longest wait for Kafka to acknowledge the events before answering 503 / SMTP 451 "
        "(the sender retries).",
    )


class PeopleSettings(EmailSettings, PhoneSettings):
    """Both people channels, as `incidents intake` runs them beside the monitors' endpoints."""


def settings_table() -> str:
    """The README table of the people channels' own settings (the shared Kafka/PostgreSQL ones are
    in the main configuration table)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in PeopleSettings.model_fields.items():
        if name in PlatformSettings.model_fields:
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, dict):
            default = {k: v.model_dump() if isinstance(v, BaseModel) else "***" for k, v in default.items()}
            shown = (
                f"`{json.dumps(default, separators=(',', ':'))}`" if len(str(default)) < 60 else "see below"
            )
        else:
            shown = "–" if default is None else f"`{default}`"
        rows.append(f"| `{name.upper()}` | {shown} | {field.description or ''} |")
    return "\n".join(rows)

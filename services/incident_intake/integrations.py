"""The integrations file: which monitors may report, how their alerts map to the contract, their secrets."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml

__all__ = ["Integration", "Integrations", "IntegrationsError", "load_integrations"]

SCHEMA_PATH = Path(__file__).with_name("integrations.schema.json")
Kind = Literal["alertmanager", "grafana", "pagerduty"]
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")

# Defaults of the severity mapping: Alertmanager/Grafana rules commonly set a `severity` label;
# PagerDuty's payload.severity is one of critical/error/warning/info.
DEFAULT_LABEL_SEVERITIES = {
    "critical": "critical", "page": "critical", "high": "high", "error": "high",
    "warning": "low", "low": "low", "info": "low",
}  # fmt: skip
DEFAULT_PAGERDUTY_SEVERITIES = {"critical": "critical", "error": "high", "warning": "low", "info": "low"}


class IntegrationsError(Exception):
    """The integrations file cannot be used; the message names the file, the field and the problem."""


@dataclass(frozen=True)
class Integration:
    """One configured monitor; secrets already resolved (never printed: see `__repr__`)."""

    name: str
    kind: Kind
    region: str | None = None  # a fixed region, or the default of `region_label`
    region_label: str | None = None
    region_map: dict[str, str] = field(default_factory=dict)
    severity_label: str = "severity"
    severity_map: dict[str, str] = field(default_factory=dict)
    severity_default: str = "high"
    policy: str | None = None
    incident_per: Literal["group", "alert"] = "group"
    bearer_token: str | None = field(default=None, repr=False)
    basic: tuple[str, str] | None = field(default=None, repr=False)
    hmac_secret: str | None = field(default=None, repr=False)
    hmac_header: str = "X-Grafana-Alerting-Signature"
    hmac_timestamp_header: str | None = None
    hmac_max_age_seconds: int = 300
    routing_key: str | None = field(default=None, repr=False)
    rate_per_second: float | None = None
    rate_burst: int | None = None

    @property
    def source(self) -> str:
        """The CloudEvent `source` of this integration's events: the channel that reported them."""
        return f"/channels/monitor/{self.kind}/{self.name}"


@dataclass(frozen=True)
class Integrations:
    """The configured integrations, by name and (PagerDuty) by routing key."""

    by_name: dict[str, Integration]

    def get(self, kind: str, name: str) -> Integration | None:
        """The integration `name` when it is of `kind`, else None (an unknown integration)."""
        found = self.by_name.get(name)
        return found if found is not None and found.kind == kind else None

    def by_routing_key(self, routing_key: str) -> Integration | None:
        """The PagerDuty integration whose routing key is `routing_key` (compared in constant time)."""
        import hmac

        found = None
        if not routing_key:
            return None  # an empty key never names an integration
        for integration in self.by_name.values():
            key = integration.routing_key
            if key is not None and hmac.compare_digest(key.encode(), routing_key.encode()):
                found = integration
        return found


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))


def _where(error: jsonschema.ValidationError) -> str:
    return ".".join(map(str, error.absolute_path)) or "(top level)"


def validate_document(document: Any) -> list[str]:
    """Every schema error of a parsed integrations document, each as `path: problem` (empty when valid)."""
    errors = sorted(_validator().iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    problems = []
    for error in errors:
        # an if/then failure says little by itself; its sub-errors say which field is wrong
        leaves = [e for e in error.context or () if not e.context] or [error]
        for leaf in leaves if error.validator in ("anyOf", "oneOf") and len(leaves) <= 3 else [error]:
            problems.append(f"{_where(leaf)}: {leaf.message}")
    return problems


# How to set each secret, said with its problem: what the monitor is given is the same value.
_HINTS = {
    "bearer_token": "a long random token (e.g. export {name}=$(openssl rand -hex 24)); the monitor sends "
    "the same as its bearer credentials (Alertmanager's http_config.authorization)",
    "password": "the password of the monitor's basic auth",
    "secret": "a long random secret (e.g. export {name}=$(openssl rand -hex 24)); the monitor signs "
    "with the same (Grafana's HMAC signature)",
    "routing_key": "a long random key (e.g. export {name}=$(openssl rand -hex 16)); the senders put the "
    "same in each event's routing_key",
}


class _Problems(list[str]):
    """Every problem of a file, so that one check reports them all."""


def _secret(value: Any, where: str, base: Path, env: dict[str, str], problems: _Problems) -> str:
    """A secret's value: `${NAME}` replaced from the environment, or a file's content (stripped).
    A problem is added to `problems` (and "" returned) rather than raised: the caller reports all."""
    hint = _HINTS.get(where.rsplit(".", 1)[-1], "see the README, Intake: monitors")
    if isinstance(value, dict):
        path = Path(value["file"])
        path = path if path.is_absolute() else base / path
        try:
            content = path.read_text().strip()
        except OSError as exc:
            problems.append(f"{where}: cannot read the secret file {path}: {exc.strerror}")
            return ""
        if not content:  # an empty secret would let an empty credential in: refuse to start
            problems.append(
                f"{where}: the secret file {path} is empty; put the secret in it (a mounted Secret's key)"
            )
        return content

    missing = [name for name in _ENV_REFERENCE.findall(str(value)) if name not in env]
    for name in missing:
        problems.append(
            f"{where}: the environment variable {name} is not set: set it to {hint.format(name=name)}"
        )
    if missing:
        return ""
    resolved = _ENV_REFERENCE.sub(lambda match: env[match.group(1)], str(value))
    if not resolved.strip():
        problems.append(f"{where}: the secret is empty (or only white space)")
    return resolved


def _build(
    name: str, spec: dict[str, Any], base: Path, env: dict[str, str], problems: _Problems
) -> Integration:
    where = f"integrations.{name}"
    kind = spec["kind"]
    region = spec["region"]
    args: dict[str, Any] = {"name": name, "kind": kind, "policy": spec.get("policy")}
    if isinstance(region, str):
        args["region"] = region
    else:
        args.update(
            region=region.get("default"), region_label=region["label"], region_map=region.get("map", {})
        )
    severity = spec.get("severity", {})
    defaults = DEFAULT_PAGERDUTY_SEVERITIES if kind == "pagerduty" else DEFAULT_LABEL_SEVERITIES
    args.update(
        severity_label=severity.get("label", "severity"),
        severity_map={k.lower(): v for k, v in {**defaults, **severity.get("map", {})}.items()},
        severity_default=severity.get("default", "high"),
        incident_per=spec.get("incident_per", "group"),
    )
    auth = spec.get("auth") or {}
    if "bearer_token" in auth:
        args["bearer_token"] = _secret(
            auth["bearer_token"], f"{where}.auth.bearer_token", base, env, problems
        )
    if "basic" in auth:
        password = _secret(auth["basic"]["password"], f"{where}.auth.basic.password", base, env, problems)
        args["basic"] = (auth["basic"]["username"], password)
    if hmac_spec := spec.get("hmac"):
        args.update(
            hmac_secret=_secret(hmac_spec["secret"], f"{where}.hmac.secret", base, env, problems),
            hmac_header=hmac_spec.get("header", "X-Grafana-Alerting-Signature"),
            hmac_timestamp_header=hmac_spec.get("timestamp_header"),
            hmac_max_age_seconds=hmac_spec.get("max_age_seconds", 300),
        )
    if "routing_key" in spec:
        args["routing_key"] = _secret(spec["routing_key"], f"{where}.routing_key", base, env, problems)
    if limit := spec.get("rate_limit"):
        args.update(rate_per_second=float(limit["per_second"]), rate_burst=limit.get("burst"))
    return Integration(**args)


def _listing(path: Path, problems: list[str]) -> str:
    """Every problem of a file, one per line, each with its path (like `incidents notify --check`)."""
    if len(problems) == 1:
        return f"{path}: {problems[0]}"
    return f"{path}: {len(problems)} problems:\n  " + "\n  ".join(problems)


def load_integrations(path: Path, env: dict[str, str] | None = None) -> Integrations:
    """Read, validate (every error with its path) and build the integrations of `path`."""
    env = dict(os.environ) if env is None else env
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise IntegrationsError(
            f"{path}: cannot read the integrations file ({exc.strerror}); set INTAKE_INTEGRATIONS_FILE"
        ) from None
    except yaml.YAMLError as exc:
        raise IntegrationsError(f"{path}: not valid YAML: {exc}") from None
    problems = validate_document(document)
    if problems:
        raise IntegrationsError(_listing(path, problems))
    found = _Problems()
    built = {
        name: _build(name, spec, path.parent, env, found) for name, spec in document["integrations"].items()
    }
    keys = [i.routing_key for i in built.values() if i.routing_key]
    if len(keys) != len(set(keys)):
        found.append("two pagerduty integrations share a routing_key")
    if found:
        raise IntegrationsError(_listing(path, found))
    return Integrations(built)

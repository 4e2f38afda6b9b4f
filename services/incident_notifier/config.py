"""Routing configuration: YAML validated by a JSON Schema (every error with its path), secrets
resolved from the environment or files, never written in the file itself."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from incident_platform.urls import url_problem

OUTPUT_TYPES = [
    "incident.sla.warning",
    "incident.sla.breached",
    "incident.failover.required",
    "incident.sla.retracted",
    "incident.state.changed",  # from incidents.state; only for routes that name it (e.g. resolve a page)
]
CLOCKS = ["ack", "restore", "resolution", "update"]
STATES = ["reported", "acknowledged", "investigating", "failed_over", "restored"]


def _one_or_many(item: dict[str, Any]) -> dict[str, Any]:
    return {"oneOf": [item, {"type": "array", "items": item, "minItems": 1, "uniqueItems": True}]}


_SECRET: dict[str, Any] = {
    "description": "A secret, never written here: `{env: NAME}` (environment variable) or `{file: PATH}`.",
    "type": "object",
    "oneOf": [
        {
            "required": ["env"],
            "properties": {"env": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}},
        },
        {"required": ["file"], "properties": {"file": {"type": "string", "minLength": 1}}},
    ],
    "additionalProperties": False,
    "properties": {"env": {}, "file": {}},
}
_URL = {"type": "string", "pattern": "^https?://[^\\s]+$"}
_URL_OR_SECRET = {"oneOf": [_URL, _SECRET]}
_EMAIL = {"type": "string", "pattern": "^[^@\\s<>]+@[^@\\s<>]+$"}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "incident notifier routing",
    "type": "object",
    "additionalProperties": False,
    "required": ["destinations", "routes"],
    "properties": {
        "destinations": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": "^[a-z0-9][a-z0-9_-]{0,62}$"},
            "additionalProperties": {
                "type": "object",
                "required": ["type"],
                "properties": {"type": {"enum": ["webhook", "slack", "email", "pagerduty"]}},
                "allOf": [
                    {
                        "if": {"properties": {"type": {"const": "webhook"}}},
                        "then": {
                            "additionalProperties": False,
                            "required": ["url", "secrets"],
                            "properties": {
                                "type": {},
                                "url": _URL_OR_SECRET,
                                "secrets": {
                                    "description": "`whsec_` secrets; several in a rotation.",
                                    "type": "array",
                                    "items": _SECRET,
                                    "minItems": 1,
                                },
                            },
                        },
                    },
                    {
                        "if": {"properties": {"type": {"const": "slack"}}},
                        "then": {
                            "additionalProperties": False,
                            "required": ["url"],
                            "properties": {"type": {}, "url": _URL_OR_SECRET},
                        },
                    },
                    {
                        "if": {"properties": {"type": {"const": "pagerduty"}}},
                        "then": {
                            "additionalProperties": False,
                            "required": ["routing_key"],
                            "properties": {"type": {}, "routing_key": _SECRET, "url": _URL},
                        },
                    },
                    {
                        "if": {"properties": {"type": {"const": "email"}}},
                        "then": {
                            "additionalProperties": False,
                            "required": ["to", "from", "smtp"],
                            "properties": {
                                "type": {},
                                "to": {"type": "array", "items": _EMAIL, "minItems": 1},
                                "from": _EMAIL,
                                "smtp": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["host"],
                                    "properties": {
                                        "host": {"type": "string", "minLength": 1},
                                        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                                        "starttls": {"type": "boolean"},
                                        "tls": {"type": "boolean"},
                                        "username": {"type": "string"},
                                        "password": _SECRET,
                                    },
                                },
                            },
                        },
                    },
                ],
            },
        },
        "routes": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["to"],
                "properties": {
                    "name": {"type": "string"},
                    "match": {
                        "description": "Every key must match (a value or a list).",
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "type": _one_or_many({"enum": OUTPUT_TYPES}),
                            "clock": _one_or_many({"enum": CLOCKS}),
                            "state": _one_or_many({"enum": STATES}),
                            "threshold": _one_or_many(
                                {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}
                            ),
                            "severity": _one_or_many({"enum": ["critical", "high", "low"]}),
                            "region": _one_or_many({"enum": ["au", "us", "uk"]}),
                            "policy": _one_or_many({"type": "string", "minLength": 1}),
                        },
                    },
                    "to": _one_or_many({"type": "string"}),
                },
            },
        },
    },
}


class ConfigError(ValueError):
    """A routing configuration that cannot be used; the message names the file and each problem's path."""


@dataclass(frozen=True)
class Secret:
    """Where a secret comes from; `value()` reads it when a delivery needs it."""

    env: str | None = None
    file: str | None = None

    def value(self) -> str:
        if self.env is not None:
            found = os.environ.get(self.env)
            if not found:
                raise ConfigError(f"environment variable {self.env} (a notifier secret) is not set")
            return found
        assert self.file is not None
        try:
            return Path(self.file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"secret file {self.file}: {exc.strerror}") from None

    def where(self) -> str:
        return f"env {self.env}" if self.env else f"file {self.file}"


def _secret_or_text(value: Any) -> str | Secret:
    return Secret(**value) if isinstance(value, dict) else str(value)


def reveal(value: str | Secret) -> str:
    return value.value() if isinstance(value, Secret) else value


@dataclass(frozen=True)
class Destination:
    name: str
    type: str
    url: str | Secret | None = None
    secrets: tuple[Secret, ...] = ()
    routing_key: Secret | None = None
    to: tuple[str, ...] = ()
    sender: str | None = None
    smtp: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Route:
    name: str
    match: dict[str, tuple[Any, ...]]
    to: tuple[str, ...]


@dataclass(frozen=True)
class RoutingConfig:
    destinations: dict[str, Destination]
    routes: tuple[Route, ...]

    def check_secrets(self) -> list[str]:
        """Problems with the secrets (unset variables, unreadable files, a bad `whsec_`, a URL that is
        none), one line each, named by their path in the file and saying how to set them."""
        from standardwebhooks import Webhook

        problems = []
        for dest in self.destinations.values():
            refs: list[tuple[str, Any]] = [(f"secrets[{i}]", secret) for i, secret in enumerate(dest.secrets)]
            refs += [("routing_key", dest.routing_key), ("url", dest.url)]
            refs.append(("smtp.password", dest.smtp.get("password")))
            for key, ref in refs:
                if not isinstance(ref, Secret):
                    continue
                where = f"destinations.{dest.name}.{key}"
                hint = _hint(dest.type, key)
                try:
                    text = ref.value()
                except ConfigError as exc:
                    problems.append(f"{where}: {exc}; {hint}")
                    continue
                if key.startswith("secrets["):
                    try:
                        Webhook(text)
                    except Exception:
                        problems.append(f"{where}: {ref.where()} is not a whsec_ base64 secret; {hint}")
                elif key == "url" and (problem := url_problem(text, https_only=dest.type == "slack")):
                    problems.append(f"{where}: {ref.where()} {problem}; {hint}")
        return problems


# How to set each kind of secret, said with its problem (README, Notifications).
_HINTS = {
    ("slack", "url"): "set it to the Slack app's incoming webhook URL, https://hooks.slack.com/services/...",
    ("webhook", "url"): "set it to the receiver's URL, https://host/path",
    ("pagerduty", "routing_key"): "set it to the Integration Key (32 characters) of a PagerDuty "
    "service's Events API v2 integration",
    ("webhook", "secrets"): "set it to whsec_ and the base64 of 24 to 64 random bytes, e.g. "
    "whsec_$(head -c 24 /dev/urandom | base64); the receiver verifies with the same secret",
    ("email", "smtp.password"): "set it to the SMTP user's password",
}


def _hint(kind: str, key: str) -> str:
    return _HINTS.get((kind, key.split("[")[0]), "see the README, Notifications")


def _listed(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, list) else (value,)


def _path(error: Any) -> str:
    parts = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return parts.lstrip(".") or "(top level)"


def parse(document: Any, origin: str = "<config>") -> RoutingConfig:
    """Validate a loaded document and build the config; ConfigError lists every problem with its path."""
    validator = Draft202012Validator(SCHEMA)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"{_path(e)}: {_message(e)}" for e in errors]
        raise ConfigError(f"{origin}: {len(lines)} problem(s):\n  " + "\n  ".join(lines))
    destinations = {}
    for name, spec in document["destinations"].items():
        destinations[name] = Destination(
            name=name,
            type=spec["type"],
            url=_secret_or_text(spec["url"]) if "url" in spec else None,
            secrets=tuple(Secret(**s) for s in spec.get("secrets", ())),
            routing_key=Secret(**spec["routing_key"]) if "routing_key" in spec else None,
            to=tuple(spec.get("to", ())),
            sender=spec.get("from"),
            smtp={k: (Secret(**v) if k == "password" else v) for k, v in spec.get("smtp", {}).items()},
        )
    problems = []
    for name, dest in destinations.items():
        if isinstance(dest.url, str) and (problem := url_problem(dest.url, https_only=dest.type == "slack")):
            problems.append(f"destinations.{name}.url: {problem}; expected https://host/path")
    routes = []
    for index, spec in enumerate(document["routes"]):
        to = _listed(spec["to"])
        for target in to:
            if target not in destinations:
                problems.append(
                    f"routes[{index}].to: unknown destination {target!r} (known: {', '.join(destinations)})"
                )
        match = {key: _listed(value) for key, value in spec.get("match", {}).items()}
        routes.append(Route(spec.get("name", f"route {index}"), match, to))
    if problems:
        raise ConfigError(f"{origin}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return RoutingConfig(destinations, tuple(routes))


def _message(error: Any) -> str:
    if error.validator == "oneOf" and error.context:
        # the most telling of the alternatives: the deepest one
        best = max(error.context, key=lambda e: len(e.absolute_path))
        return str(best.message)
    if error.validator == "additionalProperties":
        return str(error.message).replace("Additional properties are not allowed", "unknown key(s)")
    return str(error.message)


def load(path: Path) -> RoutingConfig:
    """Read, validate and build the routing config of `path`."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the notifier config ({exc.strerror}); set INCIDENTS_NOTIFIER_CONFIG"
        ) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse(document, str(path))

"""Routing configuration: YAML validated by a JSON Schema (every error with its path), secrets
resolved from the environment or files, never written in the file itself."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator

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
        """Problems with the secrets (unset variables, unreadable files, bad `whsec_`), one line each."""
        from standardwebhooks import Webhook

        problems = []
        for dest in self.destinations.values():
            refs = [*dest.secrets, dest.routing_key, dest.url, dest.smtp.get("password")]
            for ref in refs:
                if isinstance(ref, Secret):
                    try:
                        text = ref.value()
                        if ref in dest.secrets:
                            Webhook(text)
                    except ConfigError as exc:
                        problems.append(f"destination {dest.name}: {exc}")
                    except Exception:
                        problems.append(
                            f"destination {dest.name}: {ref.where()} is not a whsec_ base64 secret"
                        )
        return problems


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
    routes = []
    problems = []
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

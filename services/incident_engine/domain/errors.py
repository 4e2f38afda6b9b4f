"""Errors of the SLA domain. Input decoding errors live in the contracts package and are re-exported."""

from __future__ import annotations

from incident_contracts.errors import DecodeError, InputError, SchemaError

__all__ = ["DecodeError", "DomainError", "InputError", "PolicyError", "SchemaError", "UnknownPolicyError"]


class DomainError(Exception):
    """Base of the domain's own errors."""


class PolicyError(DomainError, ValueError):
    """A policy file that cannot be used; the message names the file, then each problem with its
    line and field (`file:line: field: problem`, one per line)."""

    def __init__(
        self,
        file: str,
        field: str,
        problem: str,
        problems: list[tuple[int | None, str, str]] | None = None,
    ) -> None:
        self.file = file
        self.field = field
        self.problem = problem
        self.problems = problems or [(None, field, problem)]  # (line, field, problem), all of them
        lines = [f"{file}{f':{n}' if n else ''}: {where}: {what}" for n, where, what in self.problems]
        if len(lines) > 1:
            lines.insert(0, f"{file}: {len(lines)} problems")
        super().__init__("\n".join(lines))


class UnknownPolicyError(DomainError, KeyError):
    """A policy name that no loaded policy has."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.name = name
        self.known = known

    def __str__(self) -> str:
        return f"unknown policy {self.name!r} (known: {', '.join(self.known) or 'none'})"

"""The intake's PostgreSQL tables for people's channels: numbers, Message-IDs, allowlists, steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

import asyncpg

from incident_platform.postgres import create_pool, migrate

__all__ = ["LOCK_KEY", "MIGRATIONS", "MIGRATIONS_TABLE", "NewIncident", "PeopleStore", "migrate_people"]

MIGRATIONS: Final = Path(__file__).parent / "migrations"
MIGRATIONS_TABLE: Final = "intake_schema_migrations"
LOCK_KEY: Final = 0x1A7A_0001


async def migrate_people(dsn: str) -> list[str]:
    """Apply the intake's pending migrations (shared bookkeeping table with the monitor intake)."""
    return await migrate(dsn, MIGRATIONS, table=MIGRATIONS_TABLE, lock_key=LOCK_KEY)


@dataclass(frozen=True)
class NewIncident:
    """What the intake records of an incident a person opened."""

    incident_id: str
    source: str
    reporter: str
    severity: str
    region: str
    summary: str
    details: str = ""


class PeopleStore:
    """Queries of the people channels on an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(cls, dsn: str, **pool_args: object) -> PeopleStore:
        """A store on a new pool (closed by `close`)."""
        return cls(await create_pool(dsn, min_size=1, max_size=4, **pool_args))  # type: ignore[arg-type]

    async def close(self) -> None:
        """Close the pool."""
        await self.pool.close()

    async def number_for(self, incident: NewIncident) -> int:
        """The incident's number, allocated on first sight (a retry gets the same number)."""
        row = await self.pool.fetchrow(
            "INSERT INTO intake_people_incidents"
            " (incident_id, source, reporter, severity, region, summary, details)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (incident_id) DO NOTHING RETURNING number",
            incident.incident_id, incident.source, incident.reporter, incident.severity, incident.region,
            incident.summary, incident.details,
        )  # fmt: skip
        if row is not None:
            return int(row["number"])
        number = await self.pool.fetchval(
            "SELECT number FROM intake_people_incidents WHERE incident_id = $1", incident.incident_id
        )
        return int(number)

    async def incident_of_number(self, number: int) -> str | None:
        """The incident id behind `INC-<number>`, or None."""
        value = await self.pool.fetchval(
            "SELECT incident_id FROM intake_people_incidents WHERE number = $1", number
        )
        return str(value) if value is not None else None

    async def number_of(self, incident_id: str) -> int | None:
        """The number of an incident opened by people, or None."""
        value = await self.pool.fetchval(
            "SELECT number FROM intake_people_incidents WHERE incident_id = $1", incident_id
        )
        return int(value) if value is not None else None

    # ---- email

    async def incident_of_messages(self, message_ids: list[str]) -> str | None:
        """The incident of the first of `message_ids` the system received or sent, or None."""
        if not message_ids:
            return None
        row = await self.pool.fetchrow(
            "SELECT m.incident_id FROM unnest($1::text[]) WITH ORDINALITY AS r(message_id, pos)"
            " JOIN intake_email_messages m USING (message_id) ORDER BY r.pos LIMIT 1",
            message_ids,
        )
        return str(row["incident_id"]) if row else None

    async def seen_message(self, message_id: str) -> bool:
        """True when this received message was already published (a re-delivery)."""
        return bool(
            await self.pool.fetchval(
                "SELECT true FROM intake_email_messages WHERE message_id = $1 AND direction = 'in'",
                message_id,
            )
        )

    async def remember_message(self, message_id: str, incident_id: str, direction: str = "in") -> None:
        """Map a received (or, for the notifier, sent) Message-ID to its incident."""
        await self.pool.execute(
            "INSERT INTO intake_email_messages (message_id, incident_id, direction) VALUES ($1, $2, $3)"
            " ON CONFLICT (message_id) DO NOTHING",
            message_id, incident_id, direction,
        )  # fmt: skip

    async def sender_rules(self, mailbox: str) -> dict[str, bool]:
        """The allowlist of a mailbox: sender (address or '@domain') -> may change incidents."""
        rows = await self.pool.fetch(
            "SELECT sender, can_change FROM intake_email_senders WHERE mailbox = $1", mailbox
        )
        return {str(r["sender"]): bool(r["can_change"]) for r in rows}

    # ---- phone

    async def is_responder(self, line: str, phone: str) -> bool:
        """True when `phone` may acknowledge/restore incidents on `line`."""
        return bool(
            await self.pool.fetchval(
                "SELECT true FROM intake_phone_responders WHERE line = $1 AND phone = $2", line, phone
            )
        )

    async def answered(self, sid: str, step: str) -> str | None:
        """The answer already given to this webhook step, or None."""
        value = await self.pool.fetchval(
            "SELECT answer FROM intake_phone_steps WHERE sid = $1 AND step = $2", sid, step
        )
        return str(value) if value is not None else None

    async def remember_answer(self, sid: str, step: str, answer: str) -> None:
        """Keep the answer of a step whose events Kafka acknowledged."""
        await self.pool.execute(
            "INSERT INTO intake_phone_steps (sid, step, answer) VALUES ($1, $2, $3)"
            " ON CONFLICT (sid, step) DO NOTHING",
            sid, step, answer,
        )  # fmt: skip

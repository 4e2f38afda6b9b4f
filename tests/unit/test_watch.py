"""What `incidents tail` shows and how `publish --wait` recognises the engine's verdict on its event."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
from rich.console import Console

from incident_contracts import parse_event
from incident_contracts.envelope import OutputEvent
from incident_engine.domain.errors import SchemaError
from incident_engine.domain.outputs import reject_input
from incident_engine.entrypoints.commands import build_event
from incident_engine.entrypoints.watch import Filter, render, topic_name, verdict_ids, verdict_of
from incident_platform.cli_errors import kafka_unreachable, postgres_unreachable
from tests.unit.sla_helpers import domain

pytestmark = pytest.mark.unit
T0 = datetime(2026, 3, 5, 14, 0, tzinfo=UTC)


def wire(out: OutputEvent) -> dict[str, object]:
    """An output as a follower reads it from Kafka."""
    return orjson.loads(out.to_json_bytes())  # type: ignore[no-any-return]


def publish(
    event_type: str, incident: str, source: str = "/channels/cli", **extra: object
) -> dict[str, object]:
    severity, region = ("critical", "au") if event_type == "reported" else (None, None)
    return build_event(event_type, incident, source=source, time=T0, severity=severity, region=region,
                       summary=None, extra=dict(extra))  # fmt: skip


def decide(sla, incident, event):  # type: ignore[no-untyped-def]
    return sla.handle(incident, parse_event(orjson.dumps(event)), T0 + timedelta(seconds=1))


def test_verdicts_match_their_own_event_only() -> None:
    sla = domain()
    reported = publish("reported", "INC-1")
    created = decide(sla, None, reported)
    ack = publish("acknowledged", "INC-1")
    acked = decide(sla, created.incident, ack)
    again = publish("acknowledged", "INC-1")  # a second ack: a duplicate
    duplicate = decide(sla, acked.incident, again)
    ghost = publish("acknowledged", "DOES-NOT-EXIST")
    unknown = decide(sla, None, ghost)

    verdict = verdict_of(wire(acked.outputs[0]), *verdict_ids(ack, 0, 7))
    assert verdict is not None and verdict.accepted
    assert verdict.describe() == "accepted: INC-1 reported -> acknowledged"
    first = verdict_of(wire(created.outputs[0]), *verdict_ids(reported, 0, 6))
    assert first is not None and first.accepted and first.describe() == "accepted: INC-1 (new) -> reported"
    refused = verdict_of(wire(duplicate.outputs[0]), *verdict_ids(again, 0, 8))
    assert (
        refused is not None and not refused.accepted and refused.describe().startswith("rejected (duplicate)")
    )
    nobody = verdict_of(wire(unknown.outputs[0]), *verdict_ids(ghost, 3, 9))
    assert nobody is not None and nobody.describe() == (
        "rejected (unknown_incident): no incident 'DOES-NOT-EXIST' has been reported"
    )
    # and never another event's: the same outputs are no verdict on a different event
    assert verdict_of(wire(acked.outputs[0]), *verdict_ids(again, 0, 8)) is None
    assert verdict_of(wire(duplicate.outputs[0]), *verdict_ids(ack, 0, 7)) is None
    other_channel = publish("acknowledged", "DOES-NOT-EXIST", source="/channels/email")
    other_channel["id"] = ghost["id"]  # same id from another channel: another CloudEvent
    assert verdict_of(wire(unknown.outputs[0]), *verdict_ids(other_channel, 3, 10)) is None


def test_a_message_rejected_where_it_was_read_is_matched_by_its_offset() -> None:
    event = publish("acknowledged", "INC-2")
    error = SchemaError("bad", subject="INC-2")
    dead = reject_input(error, orjson.dumps(event), T0, key=b"INC-2", origin="incidents.events/4/1234")
    assert verdict_of(wire(dead), *verdict_ids(event, 4, 1234)) is not None
    assert verdict_of(wire(dead), *verdict_ids(event, 4, 1235)) is None


def test_filter_by_incident_type_and_severity() -> None:
    sla = domain()
    state = wire(decide(sla, None, publish("reported", "INC-1")).outputs[0])
    dead = wire(decide(sla, None, publish("acknowledged", "INC-9")).outputs[0])
    assert Filter().matches(state) and Filter().matches(dead)
    assert Filter(incident="INC-1").matches(state) and not Filter(incident="INC-1").matches(dead)
    assert Filter(types=("rejected",)).matches(dead) and not Filter(types=("rejected",)).matches(state)
    assert Filter(types=("incident.state.changed",)).matches(state)
    assert not Filter(types=("changed.not",)).matches(state)
    assert Filter(severity="critical").matches(state) and not Filter(severity="low").matches(state)
    assert not Filter(severity="critical").matches(dead)  # a dead letter has no severity


def test_one_readable_line_per_output() -> None:
    sla = domain()
    created = decide(sla, None, publish("reported", "INC-1"))
    late = sla.fire_due(created.incident, T0 + timedelta(hours=1))  # ack and restore breached, failover
    console = Console(width=300, no_color=True)
    with console.capture() as captured:
        for out in [*created.outputs, *late.outputs]:
            console.print(render(wire(out)))
    text = captured.get().splitlines()
    assert text[0].startswith(
        "2026-03-05 14:00:01Z  state      INC-1  (new) -> reported  critical au livepro-1"
    )
    kinds = [line.split()[2] for line in text]
    assert kinds[0] == "state" and {"warning", "BREACHED", "FAILOVER"} <= set(kinds)
    breached = next(line for line in text if "BREACHED" in line and " ack " in line)
    assert "ack breached, was due 2026-03-05 14:15:00Z" in breached
    warning = next(line for line in text if "warning" in line)
    assert "50% of its budget, due 2026-03-05 14:07:30Z" in warning
    dead = wire(decide(sla, None, publish("acknowledged", "[bold]X")).outputs[0])
    with console.capture() as captured:
        console.print(render(dead))  # ids and details are text, never rich markup
    assert "rejected   [bold]X  unknown_incident: no incident '[bold]X' has been reported" in captured.get()


def test_topic_names() -> None:
    assert (
        topic_name("state") == "incidents.state" and topic_name("incidents.breaches") == "incidents.breaches"
    )
    with pytest.raises(ValueError, match="one of state, breaches, rejected"):
        topic_name("incidents.events")


def test_unreachable_messages_say_where_and_what_to_do() -> None:
    line = postgres_unreachable("postgresql://bob:s3cret@db.example:6432/incidents", ConnectionRefusedError())
    assert line.startswith(
        "cannot reach PostgreSQL at db.example:6432 (postgresql://db.example:6432/incidents"
    )
    assert "connection refused" in line and "DATABASE_URL" in line and "s3cret" not in line
    assert postgres_unreachable("postgresql://h/db", TimeoutError()).startswith(
        "cannot reach PostgreSQL at h:5432"
    )
    # PostgreSQL answered and said no, or the URL was never usable: no "Is it running?" then
    refused = postgres_unreachable(
        "postgresql://bob:s3cret@h/nosuchdb",
        asyncpg.InvalidCatalogNameError('database "nosuchdb" does not exist'),
    )
    assert refused.startswith("PostgreSQL at h:5432 (postgresql://h/nosuchdb, from DATABASE_URL) refused")
    assert "Is it running" not in refused and "s3cret" not in refused
    bad = postgres_unreachable("not-a-url", asyncpg.ClientConfigurationError("invalid DSN: scheme ..."))
    assert bad.startswith("DATABASE_URL is not a PostgreSQL URL (not-a-url)") and "localhost" not in bad
    kafka = kafka_unreachable("k1:9092,k2:9092", "no broker answered")
    assert kafka.startswith(
        "cannot reach Kafka at k1:9092,k2:9092 (KAFKA_BOOTSTRAP_SERVERS): no broker answered"
    )

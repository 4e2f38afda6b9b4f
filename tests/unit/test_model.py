"""Invariants of the incident state over random event streams (hypothesis)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incident_contracts import parse_event
from incident_engine.domain import Incident, OutputEvent
from incident_engine.domain.model import WARNING
from incident_engine.entrypoints.processor import BatchProcessor
from tests.unit.sla_helpers import domain, event, utc, wire

pytestmark = pytest.mark.unit

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
START = utc("2025-03-27T06:00:00Z")  # a Thursday; the UK changes to BST on Sunday
KINDS = ("reported", "acknowledged", "investigating", "failed_over", "restored", "updated")

steps = st.lists(
    st.tuples(
        st.sampled_from(["INC-1", "INC-2", "INC-3"]),
        st.sampled_from(KINDS),
        st.integers(min_value=-30, max_value=36 * 60),  # minutes after the previous event (late ones too)
        st.sampled_from(["critical", "high", "low"]),
        st.sampled_from(["au", "us", "uk"]),
        st.sampled_from(["livepro-1", "livepro-2"]),
    ),
    max_size=25,
)


@cache
def _validator(event_type: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((SCHEMAS / f"{event_type}.schema.json").read_text()))


def _run(stream: list[tuple[Any, ...]]) -> tuple[list[bytes], dict[str, Incident]]:
    sla = domain()
    incidents: dict[str, Incident] = {}
    outputs: list[OutputEvent] = []
    now = START
    for number, (subject, kind, minutes, severity, region, policy) in enumerate(stream):
        at = now + timedelta(minutes=minutes)
        now = max(now, at)
        data: dict[str, Any] = {"note": "n"} if kind == "updated" else {}
        if kind == "reported":
            data = {"severity": severity, "region": region, "summary": "s", "policy": policy}
        incident = incidents.get(subject)
        if incident is not None:
            outputs += sla.fire_due(incident, now).outputs
        decision = sla.handle(incident, event(kind, at, subject, f"e{number}", **data), now)
        if decision.incident is not None:
            incidents[subject] = decision.incident
            _check_incident(decision.incident)
        outputs += decision.outputs
    for incident in incidents.values():
        outputs += sla.fire_due(incident, now + timedelta(days=10)).outputs
        _check_incident(incident)
    return [o.to_json_bytes() for o in outputs], incidents


GRACES = (timedelta(0), timedelta(seconds=5), timedelta(hours=3))
WAKERS = [BatchProcessor(domain(), None, "g", breach_grace=grace) for grace in GRACES]  # type: ignore[arg-type]


def _check_incident(incident: Incident) -> None:
    assert Incident.from_json(orjson.loads(orjson.dumps(incident.to_json()))) == incident
    # the projection's body, encoded the fast way, is byte for byte the plain one
    assert incident.to_json_bytes() == orjson.dumps(incident.to_json())
    for waker in WAKERS:  # the wake moment stops scanning early: it is still the minimum over all
        grace = waker.breach_grace
        every = [t.due_at if t.kind == WARNING else t.due_at + grace for t in incident.timers]
        assert waker.wake_of(incident) == min(every, default=None)
    assert incident.timers == sorted(incident.timers)
    clocks = [t.clock for t in incident.timers]
    assert len(clocks) == len(set(clocks))  # one pending timer per clock
    for timer in incident.timers:
        assert incident.clocks[timer.clock].active and timer.cycle == incident.clocks[timer.clock].cycle


@settings(max_examples=150, deadline=None)
@given(stream=steps)
def test_random_streams(stream: list[tuple[Any, ...]]) -> None:
    outputs, _ = _run(stream)
    documents = [json.loads(o) for o in outputs]
    ids = [d["id"] for d in documents]
    assert len(ids) == len(set(ids)), "output ids must be unique"
    for document in documents:
        _validator(document["type"]).validate(document)
    assert _run(stream)[0] == outputs  # deterministic: a replay gives the same bytes


def test_copy_is_independent() -> None:
    at = START
    incident = (
        domain().handle(None, event("reported", at, severity="low", region="uk", summary="s"), at).incident
    )
    assert incident is not None
    snapshot = incident.copy()
    domain().handle(incident, event("acknowledged", at), at)
    assert snapshot.state == "reported" and incident.state == "acknowledged"
    assert snapshot.next_due is not None


def test_two_channels_refused_alike_get_two_dead_letters() -> None:
    """Dead-letter ids derive from the event's identity, (source, id): two channels that both number
    their events from 1 and are refused for the same reason are two outputs, not one id."""
    sla = domain()
    t, minute = utc("2026-03-02T10:00:00Z"), timedelta(minutes=1)
    incident = sla.handle(None, event("reported", t, severity="low", region="uk", summary="s"), t).incident
    assert incident is not None
    sla.handle(incident, event("restored", t + minute), t + minute)
    ids = set()
    for source in ("/channels/phone/au", "/channels/email"):
        raw = wire("acknowledged", t + 2 * minute, event_id="5").replace(b"/channels/email", source.encode())
        (out,) = sla.handle(incident, parse_event(raw), t + 2 * minute).outputs
        assert out.data["reason"] == "invalid_transition"
        ids.add(out.id)
    assert len(ids) == 2


def test_body_bytes_of_moments_not_in_utc_are_the_plain_ones() -> None:
    """orjson writes an offset without its seconds: such a moment takes the plain encoding."""
    at = START
    incident = domain().handle(None, event("reported", at, severity="critical", region="uk", summary="s"), at)
    assert incident.incident is not None
    body = incident.incident
    assert body.to_json_bytes() == orjson.dumps(body.to_json())
    for zone in (timezone(timedelta(hours=1, seconds=15)), timezone(timedelta(hours=-5))):
        moment = datetime(2025, 3, 27, 7, 0, 0, 1, tzinfo=zone)
        body.last_event_at = moment
        assert body.to_json_bytes() == orjson.dumps(body.to_json())
        assert moment.isoformat().encode() in body.to_json_bytes()
        body.last_event_at = at
        body.timers[0] = body.timers[0]._replace(due_at=moment)
        assert body.to_json_bytes() == orjson.dumps(body.to_json())

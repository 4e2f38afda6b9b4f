"""Outputs carry what a notification needs (additive fields): summary, reporting source, a
warning's deadline, a failover order's severity; identical in simulate, replay and the domain."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from incident_contracts.models import FailoverRequired, SlaBreached, SlaWarning
from incident_engine.domain import Incident
from tests.unit.sla_helpers import domain, event, simulate, utc, wire

pytestmark = pytest.mark.unit
M = timedelta(minutes=1)


def test_warnings_breaches_and_failover_orders_carry_summary_source_deadline_severity() -> None:
    t = utc("2026-03-02T10:00:00Z")
    lines = [wire("reported", t, severity="critical", region="uk", summary="Payments down in London")]
    outputs = [o for o in simulate(lines, t + 40 * M) if o.type != "incident.state.changed"]
    by_kind = {(o.type, o.data.get("clock"), o.data.get("threshold")): o for o in outputs}
    warning = by_kind[("incident.sla.warning", "ack", 0.8)]
    assert warning.data["due_at"] == t + 12 * M and warning.data["deadline"] == t + 15 * M
    assert by_kind[("incident.sla.warning", "restore", 0.5)].data["deadline"] == t + 30 * M
    failover = by_kind[("incident.failover.required", None, None)]
    assert failover.data["severity"] == "critical"
    for out in outputs:
        assert out.data["summary"] == "Payments down in London"
        assert out.data["source"] == wire_source(lines[0])
    models = {"incident.sla.warning": SlaWarning, "incident.sla.breached": SlaBreached,
              "incident.failover.required": FailoverRequired}  # fmt: skip
    for out in outputs:  # the published schemas accept them
        models[out.type].model_validate(orjson.loads(out.to_json_bytes()))


def wire_source(line: bytes) -> str:
    return str(orjson.loads(line)["source"])


def test_the_projection_keeps_them_and_an_older_projection_still_loads() -> None:
    sla = domain()
    t = utc("2026-03-02T10:00:00Z")
    incident = sla.handle(None, event("reported", t, severity="low", region="au", summary="s1"), t).incident
    assert incident is not None and incident.summary == "s1" and incident.source
    assert Incident.from_json(incident.to_json()) == incident
    older = {k: v for k, v in incident.to_json().items() if k not in ("summary", "source")}
    restored = Incident.from_json(older)
    assert restored.summary is None and restored.source is None  # outputs then say null, not fail


def test_replay_check_accepts_a_projection_stored_before_the_fields() -> None:
    from incident_engine.replay import differences

    sla = domain()
    t = utc("2026-03-02T10:00:00Z")
    incident = sla.handle(None, event("reported", t, severity="low", region="au", summary="s1"), t).incident
    assert incident is not None
    older = {k: v for k, v in incident.to_json().items() if k not in ("summary", "source")}
    timers = {incident.id: incident.next_due}
    assert differences({incident.id: incident}, {incident.id: older}, timers) == []
    wrong = {**incident.to_json(), "summary": "other"}
    assert differences({incident.id: incident}, {incident.id: wrong}, timers) == [
        f"{incident.id}: projection differs from replay"
    ]
    lost = {**incident.to_json(), "summary": None, "source": None}  # kept, then lost: a difference
    assert differences({incident.id: incident}, {incident.id: lost}, timers) == [
        f"{incident.id}: projection differs from replay"
    ]

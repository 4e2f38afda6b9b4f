"""The lifecycle table of design §4, pair by pair, through the domain's decisions."""

from __future__ import annotations

import pytest

from incident_contracts.constants import INPUT_TYPES, STATES
from incident_engine.domain import Incident
from incident_engine.domain.lifecycle import MACHINE, TRANSITIONS, Outcome, mermaid, transition
from incident_engine.schemas_cli import README, with_lifecycle_diagram
from tests.unit.sla_helpers import domain, event, utc

pytestmark = pytest.mark.unit

MOVE, STAY, DUP, BAD = "move", "stay", "duplicate", "invalid_transition"
# Expected outcome of every (state, input type) pair; `reported` on a known incident is a duplicate.
ACK, INV, FO, RES = "acknowledged", "investigating", "failed_over", "restored"
EXPECTED = {
    "reported":      {ACK: ACK, INV: INV, FO: FO, RES: RES,  "updated": STAY, "reported": DUP},
    "acknowledged":  {ACK: DUP, INV: INV, FO: FO, RES: RES,  "updated": STAY, "reported": DUP},
    "investigating": {ACK: BAD, INV: DUP, FO: FO, RES: RES,  "updated": STAY, "reported": DUP},
    "failed_over":   {ACK: BAD, INV: BAD, FO: DUP, RES: RES,  "updated": STAY, "reported": DUP},
    "restored":      {ACK: BAD, INV: BAD, FO: BAD, RES: DUP, "updated": BAD,  "reported": DUP},
}  # fmt: skip
PAIRS = [(state, kind) for state in STATES for kind in (t.removeprefix("incident.") for t in INPUT_TYPES)]
PATH_TO = {
    "reported": [],
    "acknowledged": ["acknowledged"],
    "investigating": ["investigating"],
    "failed_over": ["failed_over"],
    "restored": ["restored"],
}


def incident_in(state: str) -> Incident:
    """A critical incident of livepro-1 brought to `state` through the domain itself."""
    sla = domain()
    at = utc("2025-06-11T10:00:00Z")
    decision = sla.handle(None, event("reported", at, severity="critical", region="au", summary="s"), at)
    assert decision.incident is not None
    for step in PATH_TO[state]:
        decision = sla.handle(decision.incident, event(step, at), at)
    assert decision.incident is not None and decision.incident.state == state
    return decision.incident


def test_every_pair_is_tabulated() -> None:
    assert sorted(PAIRS) == sorted((s, k) for s, row in EXPECTED.items() for k in row)


@pytest.mark.parametrize(("state", "kind"), PAIRS)
def test_pair(state: str, kind: str) -> None:
    incident = incident_in(state)
    seq = incident.seq
    at = utc("2025-06-11T10:01:00Z")
    data = {"severity": "critical", "region": "au", "summary": "s"} if kind == "reported" else {}
    if kind == "updated":
        data = {"note": "progress"}
    decision = domain().handle(incident, event(kind, at, event_id="e-pair", **data), at)
    expected = EXPECTED[state][kind]
    types = [o.type for o in decision.outputs]
    if expected in (DUP, BAD):
        assert not decision.accepted
        assert types == ["incident.rejected"]
        rejection = decision.outputs[0]
        assert rejection.data["reason"] == expected
        assert rejection.subject == "INC-1" and rejection.topic == "incidents.rejected"
        assert '"id":"e-pair"' in rejection.data["original"]
        assert incident.state == state and incident.seq == seq
    elif expected == STAY:
        assert decision.accepted and types == [] and incident.state == state and incident.seq == seq + 1
    else:
        assert decision.accepted and incident.state == expected and incident.seq == seq + 1
        assert types == ["incident.state.changed"]
        assert decision.outputs[0].data | {} == {
            "from": state,
            "to": expected,
            "cause": "e-pair",
            "policy": "livepro-1",
            "severity": "critical",
            "region": "au",
        }


@pytest.mark.parametrize("kind", ["acknowledged", "investigating", "failed_over", "restored", "updated"])
def test_unknown_incident(kind: str) -> None:
    at = utc("2025-06-11T10:00:00Z")
    data = {"note": "n"} if kind == "updated" else {}
    decision = domain().handle(None, event(kind, at, subject="INC-404", **data), at)
    assert decision.incident is None and not decision.accepted
    [rejection] = decision.outputs
    assert rejection.data["reason"] == "unknown_incident" and rejection.subject == "INC-404"


def test_table_and_machine_agree() -> None:
    """The memoized lookups read the one shared Machine, which holds exactly the table."""
    assert MACHINE.models == []  # no model per incident
    for row in TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        for source in sources:
            outcome, dest = transition(source, str(row["trigger"]))
            expected = (Outcome.STAY, None) if row["dest"] is None else (Outcome.MOVE, row["dest"])
            assert (outcome, dest) == expected


def test_readme_diagram_is_current() -> None:
    readme = README.read_text()
    assert mermaid() in readme and with_lifecycle_diagram(readme) == readme, (
        "The README lifecycle diagram is out of date: run `incidents schemas export`."
    )

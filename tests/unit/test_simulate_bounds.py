"""`simulate` has no wall clock: the contract's fixed bounds apply, the live skew/age bounds do not."""

from __future__ import annotations

import orjson
import pytest

from tests.unit.sla_helpers import simulate, wire

pytestmark = pytest.mark.unit


def test_old_history_is_evaluated_without_the_live_horizon() -> None:
    lines = [
        wire(
            "reported", "2003-03-03T10:00:00Z", subject="OLD", severity="critical", region="uk", summary="s"
        ),
        wire("acknowledged", "2021-03-03T10:00:00Z", subject="OLD"),  # 18 years later: still taken
    ]
    outputs = simulate(lines, "2021-03-04T00:00:00Z")
    kinds = [o.type.rsplit(".", 1)[-1] for o in outputs]
    assert kinds[0] == "changed" and "breached" in kinds and "required" in kinds
    assert outputs[-1].type == "incident.state.changed" and outputs[-1].data["to"] == "acknowledged"


def test_times_at_the_ends_of_the_calendar_are_rejections_and_the_run_goes_on() -> None:
    lines = [
        wire("reported", "9999-12-31T23:59:59Z", subject="A", severity="low", region="uk", summary="s"),
        wire("reported", "0001-01-01T00:00:00+01:00", subject="B", severity="low", region="uk", summary="s"),
        wire("reported", "2026-03-02T10:00:00Z", subject="C\u0000", severity="low", region="uk", summary="s"),
        wire("reported", "2026-03-02T10:00:00Z", subject="D", severity="low", region="uk", summary="s"),
    ]
    outputs = simulate(lines, "2026-03-02T10:00:00Z")
    assert [(o.type, o.data.get("reason")) for o in outputs] == [
        ("incident.rejected", "schema"), ("incident.rejected", "schema"), ("incident.rejected", "schema"),
        ("incident.state.changed", None),
    ]  # fmt: skip
    assert outputs[-1].subject == "D"


def test_the_same_id_from_two_sources_is_two_events() -> None:
    def line(subject: str, source: str) -> bytes:
        body = orjson.loads(wire("reported", "2026-03-02T10:00:00Z", subject=subject, event_id="1",
                                 severity="low", region="uk", summary="s"))  # fmt: skip
        return orjson.dumps(body | {"source": source})

    lines = [line("P", "/channels/phone/au"), line("M", "/channels/email"), line("P", "/channels/phone/au")]
    outputs = simulate(lines, "2026-03-02T10:00:00Z")
    assert [(o.type, o.subject) for o in outputs] == [
        ("incident.state.changed", "P"), ("incident.state.changed", "M")
    ]  # fmt: skip

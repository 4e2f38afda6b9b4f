"""SLA scenarios of both policies on the virtual clock: every severity and region, calendars, edge cases."""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.unit.sla_helpers import brief, domain, event, local, simulate, sla_events, utc, wire

pytestmark = pytest.mark.unit

M = timedelta(minutes=1)
REPORT = "2025-06-11 12:00"  # a Wednesday, no holiday in any region
# (kind, clock, threshold, local due time) of a report at REPORT that nobody acknowledges.
Expected = list[tuple[str, str | None, float | None, str]]
CRITICAL: Expected = [
    ("warning", "ack", 0.5, "2025-06-11 12:07:30"),
    ("warning", "ack", 0.8, "2025-06-11 12:12"),
    ("breached", "ack", None, "2025-06-11 12:15"),
    ("warning", "restore", 0.5, "2025-06-11 12:15"),
    ("warning", "restore", 0.8, "2025-06-11 12:24"),
    ("breached", "restore", None, "2025-06-11 12:30"),
    ("required", None, None, "2025-06-11 12:30"),
]
HIGH_1: Expected = [
    ("warning", "ack", 0.5, "2025-06-11 12:15"),
    ("warning", "ack", 0.8, "2025-06-11 12:24"),
    ("breached", "ack", None, "2025-06-11 12:30"),
    ("warning", "resolution", 0.5, "2025-06-11 18:00"),
    ("warning", "resolution", 0.8, "2025-06-12 09:36"),  # 8h on Wednesday, 1h36 on Thursday
    ("breached", "resolution", None, "2025-06-12 12:00"),
]
LOW = HIGH_1[:3]
EXPECTED: dict[tuple[str, str], Expected] = {
    ("livepro-1", "critical"): CRITICAL,
    ("livepro-1", "high"): HIGH_1,
    ("livepro-1", "low"): LOW,
    ("livepro-2", "critical"): CRITICAL,
    ("livepro-2", "high"): CRITICAL,  # as critical, in business time (all inside business hours here)
    ("livepro-2", "low"): LOW,
}


@pytest.mark.parametrize("region", ["au", "us", "uk"])
@pytest.mark.parametrize(("policy", "severity"), sorted(EXPECTED))
def test_unattended_incident(policy: str, severity: str, region: str) -> None:
    reported = local(region, REPORT)
    line = wire("reported", reported, severity=severity, region=region, summary="s", policy=policy)
    outputs = simulate([line], reported + timedelta(days=3))
    expected = [(k, c, t, local(region, due)) for k, c, t, due in EXPECTED[policy, severity]]
    assert sla_events(outputs) == expected
    assert [o.time for o in outputs[1:]] == [due for *_, due in expected]  # emitted when due
    assert {o.data["policy"] for o in outputs} == {policy}
    assert all(o.data["region"] == region for o in outputs)


def test_default_policy_applies_when_none_is_named() -> None:
    line = wire("reported", utc("2025-06-11T02:00:00Z"), severity="high", region="au", summary="s")
    assert simulate([line], "2025-06-11T02:10:00Z", default="livepro-2")[0].data["policy"] == "livepro-2"
    assert simulate([line], "2025-06-11T02:10:00Z")[0].data["policy"] == "livepro-1"


def test_unknown_policy_is_a_schema_rejection() -> None:
    line = wire("reported", "2025-06-11T02:00:00Z", severity="high", region="au", summary="s", policy="nope")
    [rejection] = simulate([line], "2025-06-12T00:00:00Z")
    assert rejection.data["reason"] == "schema" and "nope" in rejection.data["detail"]


def test_friday_evening_livepro2_high() -> None:
    """Reported at 19:50 on a Friday in Sydney: 10 business minutes left, then Monday morning."""
    reported = local("au", "2025-06-13 19:50")
    line = wire("reported", reported, severity="high", region="au", summary="s", policy="livepro-2")
    got = sla_events(simulate([line], local("au", "2025-06-17 00:00")))
    assert got == [
        ("warning", "ack", 0.5, local("au", "2025-06-13 19:57:30")),
        ("warning", "ack", 0.8, local("au", "2025-06-16 08:02")),
        ("breached", "ack", None, local("au", "2025-06-16 08:05")),
        ("warning", "restore", 0.5, local("au", "2025-06-16 08:05")),
        ("warning", "restore", 0.8, local("au", "2025-06-16 08:14")),
        ("breached", "restore", None, local("au", "2025-06-16 08:20")),
        ("required", None, None, local("au", "2025-06-16 08:20")),
    ]


def test_public_holiday_independence_day() -> None:
    """Thursday 19:00 before the 4th of July: the resolution day resumes on Monday."""
    lines = [
        wire("reported", local("us", "2025-07-03 19:00"), severity="high", region="us", summary="s"),
        wire("acknowledged", local("us", "2025-07-03 19:10")),
        wire("restored", local("us", "2025-07-07 17:00")),
    ]
    outputs = simulate(lines, local("us", "2025-07-09 00:00"))
    assert [brief(o)[0] for o in outputs] == ["state", "state", "warning", "warning", "state"]
    assert sla_events(outputs) == [
        ("warning", "resolution", 0.5, local("us", "2025-07-07 13:00")),  # 1h Thursday + 5h Monday
        ("warning", "resolution", 0.8, local("us", "2025-07-07 16:36")),
    ]


@pytest.mark.parametrize(
    ("region", "friday", "monday"),
    [
        ("au", "2025-04-04", "2025-04-07"),  # AEDT -> AEST
        ("us", "2025-03-07", "2025-03-10"),  # EST -> EDT
        ("uk", "2025-03-28", "2025-03-31"),  # GMT -> BST
    ],
)
def test_across_a_dst_change(region: str, friday: str, monday: str) -> None:
    lines = [
        wire("reported", local(region, f"{friday} 19:00"), severity="high", region=region, summary="s"),
        wire("investigating", local(region, f"{friday} 19:05")),
    ]
    got = sla_events(simulate(lines, local(region, f"{monday} 23:00")))
    assert got == [
        ("warning", "resolution", 0.5, local(region, f"{monday} 13:00")),
        ("warning", "resolution", 0.8, local(region, f"{monday} 16:36")),
        ("breached", "resolution", None, local(region, f"{monday} 19:00")),
    ]


def test_critical_is_real_time_across_a_dst_jump() -> None:
    """Sydney's clocks go back at 03:00 AEDT on 6 April 2025; a 24x7 clock counts real minutes."""
    reported = utc("2025-04-05T15:50:00Z")  # 02:50 AEDT
    line = wire("reported", reported, severity="critical", region="au", summary="s")
    got = sla_events(simulate([line], reported + timedelta(hours=1)))
    assert got[2] == ("breached", "ack", None, reported + 15 * M)


@pytest.mark.parametrize(
    ("offset", "fired"),
    [
        (timedelta(minutes=7, seconds=29), []),
        (timedelta(minutes=7, seconds=30), []),  # at a threshold's very moment the action is in time
        (timedelta(minutes=7, seconds=30, microseconds=1), [0.5]),
        (timedelta(minutes=12), [0.5]),
        (timedelta(minutes=15), [0.5, 0.8]),  # acknowledged at the due moment: met, no breach
        (timedelta(minutes=15, microseconds=1), [0.5, 0.8, None]),  # a microsecond later: breached
    ],
)
def test_ack_exactly_at_a_threshold(offset: timedelta, fired: list[float | None]) -> None:
    sla = domain()
    reported = utc("2025-06-11T10:00:00Z")
    incident = sla.handle(
        None, event("reported", reported, severity="critical", region="us", summary="s"), reported
    )
    decision = sla.handle(incident.incident, event("acknowledged", reported + offset), reported + offset)
    assert [t for _, clock, t, _ in sla_events(decision.outputs) if clock == "ack"] == fired
    assert decision.outputs[-1].type == "incident.state.changed"
    ack = decision.incident.clocks["ack"]  # type: ignore[union-attr]
    assert ack.stopped_at == reported + offset
    assert ack.status == ("breached" if None in fired else "met")
    assert not [t for t in decision.incident.timers if t.clock == "ack"]  # type: ignore[union-attr]


def test_update_cycle_restarted_by_incident_updated() -> None:
    lines = [
        wire("reported", local("uk", "2025-06-11 10:00"), severity="low", region="uk", summary="s"),
        wire("acknowledged", local("uk", "2025-06-11 10:10")),  # update cycle 1, due Thu 10:10
        wire("updated", local("uk", "2025-06-11 16:00"), note="digging"),  # cycle 2, due Thu 16:00
    ]
    outputs = simulate(lines, local("uk", "2025-06-13 00:00"))
    assert sla_events(outputs) == [
        ("warning", "update", 0.5, local("uk", "2025-06-12 10:00")),  # 4h Wednesday + 2h Thursday
        ("warning", "update", 0.8, local("uk", "2025-06-12 13:36")),
        ("breached", "update", None, local("uk", "2025-06-12 16:00")),
    ]
    assert [o.type for o in outputs][:2] == ["incident.state.changed"] * 2  # `updated` changes no state


def test_update_cycles_have_distinct_ids() -> None:
    start = local("uk", "2025-06-11 10:00")
    lines = [
        wire("reported", start, severity="low", region="uk", summary="s"),
        wire("acknowledged", start + M),
        wire("updated", start + 13 * timedelta(hours=24), note="one"),
    ]
    outputs = simulate(lines, start + timedelta(days=30))
    breaches = [o for o in outputs if o.type == "incident.sla.breached"]
    assert len(breaches) == 2 and breaches[0].id != breaches[1].id
    assert len({o.id for o in outputs}) == len(outputs)


def test_restored_stops_every_clock() -> None:
    start = local("au", "2025-06-11 10:00")
    lines = [
        wire("reported", start, severity="low", region="au", summary="s"),
        wire("acknowledged", start + M),
        wire("restored", start + 2 * M),
    ]
    outputs = simulate(lines, start + timedelta(days=10))
    assert sla_events(outputs) == []
    assert [o.data["to"] for o in outputs] == ["reported", "acknowledged", "restored"]


def test_failed_over_stops_restore_and_needs_no_failover() -> None:
    start = utc("2025-06-11T10:00:00Z")
    lines = [
        wire("reported", start, severity="critical", region="uk", summary="s"),
        wire("failed_over", start + 20 * M, site="backup-dc"),
    ]
    got = sla_events(simulate(lines, start + timedelta(hours=2)))
    assert ("required", None, None, start + 30 * M) not in got
    assert got[-1] == ("warning", "restore", 0.5, start + 15 * M)


def test_overdue_timers_fire_at_once_with_their_true_due_moment() -> None:
    """The engine was down: the ack arrives at 10:40 and nothing fired since the report at 10:00."""
    sla = domain()
    reported = utc("2025-06-11T10:00:00Z")
    first = sla.handle(
        None, event("reported", reported, severity="critical", region="au", summary="s"), reported
    )
    now = reported + 40 * M
    decision = sla.handle(first.incident, event("acknowledged", reported + 20 * M), now)
    # Applying the event fires what was due before the event's own time, never what is due before
    # the wall clock: that is the timer path's, once no earlier evidence can still come.
    assert [brief(o) for o in decision.outputs] == [
        ("warning", now, "ack", 0.5, reported + 7.5 * M),
        ("warning", now, "ack", 0.8, reported + 12 * M),
        ("breached", now, "ack", None, reported + 15 * M),
        ("warning", now, "restore", 0.5, reported + 15 * M),
        ("state", now, "reported", "acknowledged"),
    ]
    assert decision.incident is not None
    rest = sla.fire_due(decision.incident, now)
    assert [brief(o) for o in rest.outputs] == [
        ("warning", now, "restore", 0.8, reported + 24 * M),
        ("breached", now, "restore", None, reported + 30 * M),
        ("required", now, None, None, reported + 30 * M),
    ]


def test_late_event_never_moves_a_clock_back() -> None:
    sla = domain()
    t0 = utc("2025-06-11T10:00:00Z")
    incident = sla.handle(None, event("reported", t0, severity="low", region="us", summary="s"), t0).incident
    assert incident is not None
    sla.handle(incident, event("updated", t0 + 10 * M, note="first"), t0 + 10 * M)
    decision = sla.handle(incident, event("acknowledged", t0 + 5 * M), t0 + 11 * M)  # late: 10:05 < 10:10
    assert decision.accepted
    assert incident.clocks["ack"].stopped_at == t0 + 10 * M
    assert incident.clocks["update"].started_at == t0 + 10 * M
    assert incident.last_event_at == t0 + 10 * M


def test_repeated_ids_are_dropped_and_unknown_incidents_rejected() -> None:
    start = utc("2025-06-11T10:00:00Z")
    report = wire("reported", start, severity="critical", region="au", summary="s", event_id="e-1")
    ack = wire("acknowledged", start + M, event_id="e-2")
    stray = wire("acknowledged", start + M, subject="INC-404", event_id="e-3")
    outputs = simulate([report, report, ack, ack, stray, stray], start + 2 * M)
    assert [brief(o)[:1] + brief(o)[2:] for o in outputs] == [
        ("state", None, "reported"),
        ("state", "reported", "acknowledged"),
        ("rejected", "unknown_incident"),
    ]
    assert outputs[-1].subject == "INC-404"


def test_second_report_and_second_ack_are_duplicates() -> None:
    start = utc("2025-06-11T10:00:00Z")
    lines = [
        wire("reported", start, severity="high", region="au", summary="s", event_id="r1"),
        wire("reported", start + M, severity="high", region="au", summary="s", event_id="r2"),
        wire("acknowledged", start + M, event_id="a1"),
        wire("acknowledged", start + 2 * M, event_id="a2"),  # from another channel
    ]
    outputs = simulate(lines, start + 3 * M)
    assert [o.data.get("reason") for o in outputs if o.type == "incident.rejected"] == [
        "duplicate",
        "duplicate",
    ]


def test_rejections_and_outputs_have_stable_ids() -> None:
    start = utc("2025-06-11T10:00:00Z")
    lines = [
        wire("reported", start, severity="critical", region="au", summary="s"),
        wire("investigating", start + 20 * M),
        wire("acknowledged", start + 21 * M),
    ]
    first = simulate(lines, start + timedelta(hours=1))
    again = simulate(lines, start + timedelta(hours=1))
    assert [o.to_json_bytes() for o in first] == [o.to_json_bytes() for o in again]
    assert [o.data["reason"] for o in first if o.type == "incident.rejected"] == ["invalid_transition"]


def test_investigating_from_reported_implies_ack() -> None:
    start = local("us", "2025-06-11 06:00")  # before hours: the ack clock starts at 08:00
    lines = [
        wire("reported", start, severity="low", region="us", summary="s"),
        wire("investigating", local("us", "2025-06-11 08:20")),
    ]
    outputs = simulate(lines, local("us", "2025-06-11 09:00"))
    assert sla_events(outputs) == [("warning", "ack", 0.5, local("us", "2025-06-11 08:15"))]
    assert outputs[-1].data["to"] == "investigating"

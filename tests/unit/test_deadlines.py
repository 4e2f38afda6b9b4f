"""In time means in time (design §5): the deadline itself, backlogs, and evidence read after a breach.

Each case runs through `simulate` (the virtual clock) and, where it differs, through the domain calls
the live engine and replay make; the live engine's own tests are in tests/integration/test_event_time.py.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from incident_engine.domain import Incident, SlaDomain
from incident_engine.replay import replay_incident
from tests.unit.sla_helpers import domain, event, local, simulate, sla_events, utc, wire

pytestmark = pytest.mark.unit
M = timedelta(minutes=1)


def reported_critical() -> tuple[SlaDomain, datetime, Incident]:
    """A domain, a moment and a critical UK incident reported then (24x7: ack 15 min, restore 30)."""
    sla = domain()
    t = utc("2026-03-02T10:00:00Z")
    incident = sla.handle(
        None, event("reported", t, severity="critical", region="uk", summary="s"), t
    ).incident
    assert incident is not None
    return sla, t, incident


def test_the_issue_example_ack_and_restore_exactly_at_their_deadlines_are_met() -> None:
    lines = [
        b'{"specversion":"1.0","id":"eq-1","source":"/t","type":"incident.reported","subject":"EQ",'
        b'"time":"2026-12-05T03:00:00Z","data":{"severity":"critical","region":"us","summary":"x"}}',
        b'{"specversion":"1.0","id":"eq-2","source":"/t","type":"incident.acknowledged","subject":"EQ",'
        b'"time":"2026-12-05T03:15:00Z","data":{}}',
        b'{"specversion":"1.0","id":"eq-3","source":"/t","type":"incident.restored","subject":"EQ",'
        b'"time":"2026-12-05T03:30:00Z","data":{}}',
    ]
    t = utc("2026-12-05T03:00:00Z")
    assert sla_events(simulate(lines, "2026-12-06T00:00:00Z")) == [
        ("warning", "ack", 0.5, t + 7.5 * M),
        ("warning", "ack", 0.8, t + 12 * M),
        ("warning", "restore", 0.5, t + 15 * M),
        ("warning", "restore", 0.8, t + 24 * M),
    ]  # no breach, no failover order: at the due moment the action is in time


def test_a_backlog_of_met_clocks_gives_what_the_sla_says() -> None:
    """Reported at T, acknowledged at T+5, restored at T+20: only the restore 50 % warning is due."""
    t = utc("2026-03-02T10:00:00Z")
    lines = [
        wire("reported", t, severity="critical", region="au", summary="s"),
        wire("acknowledged", t + 5 * M),
        wire("restored", t + 20 * M),
    ]
    assert sla_events(simulate(lines, t + 5 * 60 * M)) == [("warning", "restore", 0.5, t + 15 * M)]


@pytest.mark.parametrize(
    ("severity", "clock", "budget", "stop", "policy"),
    [
        ("critical", "ack", 15 * M, "acknowledged", "livepro-1"),
        ("critical", "restore", 30 * M, "restored", "livepro-1"),
        ("high", "restore", 30 * M, "failed_over", "livepro-2"),  # business time, with failover
        ("high", "resolution", 12 * 60 * M, "restored", "livepro-1"),  # 12 business hours
        ("low", "update", 12 * 60 * M, "updated", "livepro-1"),  # a cycle, from the acknowledgement
    ],
)
@pytest.mark.parametrize("late", [timedelta(0), timedelta(microseconds=1)])
def test_each_clock_at_its_exact_due_moment(
    severity: str, clock: str, budget: timedelta, stop: str, policy: str, late: timedelta
) -> None:
    """A stop at the due moment meets the clock; a microsecond later breaches it (and, for a clock
    with failover, orders it)."""
    # Monday 08:00 in London: business time runs without a break for 12 hours.
    start = local("uk", "2026-03-02 08:00")
    lines = [wire("reported", start, severity=severity, region="uk", summary="s", policy=policy)]
    opened = start
    if clock == "update":
        lines.append(wire("acknowledged", start + M))
        opened = start + M
    if clock != "ack":  # stop the ack clock early so only the clock under test is due at that moment
        lines.append(wire("investigating", start + 2 * M))
        if clock == "update":
            opened = start + 2 * M  # every accepted event starts a new update cycle
    calendar = domain().policies.get(policy).calendar(severity, "uk")
    due = calendar.add(opened, budget)
    lines.append(wire(stop, due + late, note="n") if stop == "updated" else wire(stop, due + late))
    got = [(kind, name) for kind, name, _, at in sla_events(simulate(lines, due + 24 * 60 * M)) if at == due]
    breached = [g for g in got if g[0] != "warning"]
    if late:
        expected = [("breached", clock)] + ([("required", None)] if clock == "restore" else [])
        assert breached == expected
    else:
        assert breached == []


def test_evidence_read_after_the_breach_retracts_it() -> None:
    """The ack happened at T+10 (in time) but is read after an event stamped T+20 fired the breach."""
    t = utc("2026-03-02T10:00:00Z")
    lines = [
        wire("reported", t, severity="critical", region="au", summary="s"),
        wire("updated", t + 20 * M, note="customer chased"),  # fires the ack breach (due T+15)
        wire("acknowledged", t + 10 * M),  # late in the log, early in fact
    ]
    outputs = simulate(lines, t + 25 * M)
    kinds = [(o.type, o.data.get("clock")) for o in outputs if o.topic == "incidents.breaches"]
    assert ("incident.sla.breached", "ack") in kinds
    (retraction,) = [o for o in outputs if o.type == "incident.sla.retracted"]
    (breach,) = [o for o in outputs if o.type == "incident.sla.breached"]
    assert retraction.data["retracts"] == breach.id
    assert retraction.data["retracted_type"] == "incident.sla.breached"
    assert retraction.data["clock"] == "ack"
    assert retraction.data["stopped_at"] == t + 10 * M
    assert retraction.data["due_at"] == t + 15 * M
    assert retraction.data["cause"] == "INC-1-acknowledged-" + (t + 10 * M).isoformat()
    assert retraction.subject == "INC-1"


def test_a_retracted_restore_breach_also_retracts_its_failover_order() -> None:
    sla, t, incident = reported_critical()
    sla.handle(incident, event("acknowledged", t + 2 * M), t + 2 * M)
    now = t + 31 * M  # the engine fired the restore breach and failover order at 30:00 + grace
    fired = sla.fire_due(incident, now).outputs
    assert [o.type for o in fired][-2:] == ["incident.sla.breached", "incident.failover.required"]
    decision = sla.handle(incident, event("restored", t + 29 * M), t + 32 * M)  # in time, read late
    retracted = [o for o in decision.outputs if o.type == "incident.sla.retracted"]
    assert [o.data["retracted_type"] for o in retracted] == [
        "incident.sla.breached",
        "incident.failover.required",
    ]
    assert [o.data["retracts"] for o in retracted] == [o.id for o in fired[-2:]]
    assert incident.clocks["restore"].status == "met"


def test_evidence_after_the_due_moment_retracts_nothing() -> None:
    sla, t, incident = reported_critical()
    sla.fire_due(incident, t + 16 * M)
    decision = sla.handle(incident, event("acknowledged", t + 15 * M + timedelta(seconds=1)), t + 17 * M)
    assert [o.type for o in decision.outputs] == ["incident.state.changed"]
    assert incident.clocks["ack"].status == "breached"


def test_a_breach_held_by_the_grace_is_cancelled_by_evidence_within_it() -> None:
    """The live engine fires a breach only once its grace has passed (`breach_until`); an ack stamped
    in time and read within the grace cancels it, and nothing is sent."""
    sla, t, incident = reported_critical()
    now = t + 15 * M + timedelta(seconds=3)  # past the due moment, within a 5 s grace
    held = sla.fire_due(incident, now, breach_until=now - timedelta(seconds=5)).outputs
    assert [(o.type, o.data.get("threshold")) for o in held] == [
        ("incident.sla.warning", 0.5),
        ("incident.sla.warning", 0.8),
        ("incident.sla.warning", 0.5),  # restore 50 % at 15:00: warnings do not wait
    ]
    decision = sla.handle(incident, event("acknowledged", t + 14 * M), now)
    assert [o.type for o in decision.outputs] == ["incident.state.changed"]
    assert incident.clocks["ack"].status == "met"


def test_replay_with_recorded_horizons_is_exact_and_counts_the_retracted_breach_as_met() -> None:
    sla = domain()
    t = utc("2026-03-02T10:00:00Z")
    grace = timedelta(seconds=5)
    steps = [
        (t, wire("reported", t, severity="critical", region="uk", summary="s")),
        (t + 21 * M, wire("acknowledged", t + 14 * M)),  # read after the breach went out
    ]
    fired_at = t + 16 * M
    until = fired_at - timedelta(microseconds=1)
    firings = [(fired_at, until, until - grace)]
    fired: list = []
    incident, applied = replay_incident(sla, steps, firings, fired=fired)
    assert applied == 2 and incident is not None
    assert incident.clocks["ack"].status == "met"
    assert [(f.clock, f.kind) for f in fired] == [
        ("ack", "warning"),
        ("ack", "warning"),
        ("restore", "warning"),
    ]


def test_an_event_stamped_ahead_of_the_engine_clock_is_applied_as_of_the_clock() -> None:
    """Within the skew an event may be stamped a few minutes ahead; time passes no faster for it: it
    fires nothing due after `now`, and its clocks start (or stop) at `now`."""
    sla, t, incident = reported_critical()
    now = t + 28 * M
    decision = sla.handle(incident, event("updated", t + 32 * M, note="fast clock"), now)
    due = [o for o in decision.outputs if o.type in ("incident.sla.breached", "incident.failover.required")]
    assert all(o.data["due_at"] < now for o in due)  # the ack breach (due 15 min), not the restore one
    assert incident.last_event_at == now
    ahead = sla.handle(
        None, event("reported", t + 3 * M, "INC-2", severity="low", region="uk", summary="s"), t
    )
    assert ahead.incident is not None and ahead.incident.reported_at == t


def test_what_if_on_a_backlog_read_late_uses_event_time() -> None:
    """What-if's on-time replay fires what was due before each event's own time, not before the moment
    the engine read it: the issue's backlog (read two hours late) gives simulate's one warning."""
    t = utc("2026-12-05T03:00:00Z")
    lines = [
        wire("reported", t, severity="critical", region="us", summary="s"),
        wire("acknowledged", t + 5 * M),
        wire("restored", t + 20 * M),
    ]
    read = t + 120 * M
    steps = [(read + i * timedelta(seconds=1), line) for i, line in enumerate(lines)]
    fired: list = []
    replay_incident(domain(), steps, on_time_until=read + 60 * M, fired=fired)
    assert [(f.clock, f.kind, f.threshold) for f in fired] == [("restore", "warning", 0.5)]
    assert sla_events(simulate(lines, read)) == [("warning", "restore", 0.5, t + 15 * M)]

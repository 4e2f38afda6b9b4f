"""The intake's mapping of monitors' payloads (from their docs) to the contract's input events."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime, timedelta

import pytest

from incident_intake.channels import alertmanager, grafana, pagerduty
from incident_intake.channels.common import PayloadError
from incident_intake.integrations import DEFAULT_LABEL_SEVERITIES, DEFAULT_PAGERDUTY_SEVERITIES, Integration
from incident_intake.publish import envelope
from incident_intake.tracking import Tracked, decide
from tests.unit.intake_payloads import ALERTMANAGER_V4, GRAFANA, PAGERDUTY_TRIGGER, fresh, resolved

pytestmark = pytest.mark.unit

NOW = datetime(2026, 10, 12, 12, 0, tzinfo=UTC)
AM = Integration(
    "prom",
    "alertmanager",
    region="au",
    severity_map=DEFAULT_LABEL_SEVERITIES,
    policy="livepro-2",
    bearer_token="t",
)
PD = Integration("pd", "pagerduty", region="uk", severity_map=DEFAULT_PAGERDUTY_SEVERITIES, routing_key="k")


def run(integration: Integration, signals: list, state: dict | None = None) -> tuple[list, dict]:
    """Decide signals one after the other like the service does; return the CloudEvents and the state."""
    state = {} if state is None else state
    events = []
    for signal in signals:
        decision = decide(integration.name, integration.policy, signal, state.get(signal.key, Tracked()), NOW)
        state[signal.key] = decision.tracked
        events += [envelope(e, integration.source) for e in decision.events]
    return events, state


def test_an_alertmanager_group_reports_one_incident_with_the_alert_s_words() -> None:
    (signal,) = alertmanager.signals(AM, ALERTMANAGER_V4, NOW)
    (event,), _ = run(AM, [signal])
    assert event["type"] == "incident.reported"
    assert event["source"] == "/channels/monitor/alertmanager/prom"
    assert event["data"] == {"severity": "critical", "region": "au", "policy": "livepro-2",
                             "summary": "BlackBox Probe Failure: https://server.example.org"}  # fmt: skip
    assert event["time"] == "2026-02-06T13:08:45.828000Z"  # startsAt: when it happened
    assert event["subject"].startswith("prom-")


def test_a_repeat_adds_nothing_a_change_is_an_update_and_a_resolve_restores() -> None:
    (reported,), state = run(AM, alertmanager.signals(AM, ALERTMANAGER_V4, NOW))
    again, state = run(AM, alertmanager.signals(AM, ALERTMANAGER_V4, NOW), state)
    assert again == []  # repeat_interval's re-send, or the sender's retry
    grown = fresh(ALERTMANAGER_V4)
    grown["alerts"].append({**grown["alerts"][0], "fingerprint": "ffff", "labels": {"alertname": "Other"}})
    (updated,), state = run(AM, alertmanager.signals(AM, grown, NOW), state)
    assert updated["type"] == "incident.updated" and updated["subject"] == reported["subject"]
    assert "2 alert(s) firing" in updated["data"]["note"]
    (restored,), state = run(AM, alertmanager.signals(AM, resolved(grown), NOW), state)
    assert restored["type"] == "incident.restored" and restored["subject"] == reported["subject"]
    assert restored["time"] == "2026-02-06T13:20:00Z"
    assert run(AM, alertmanager.signals(AM, resolved(grown), NOW), state)[0] == []  # resolve re-sent
    (reopened,), _ = run(AM, alertmanager.signals(AM, ALERTMANAGER_V4, NOW), state)
    assert reopened["type"] == "incident.reported" and reopened["subject"] != reported["subject"]


def test_event_ids_are_derived_from_the_payload_so_a_retry_is_the_same_event() -> None:
    first, _ = run(AM, alertmanager.signals(AM, ALERTMANAGER_V4, NOW))
    retried, _ = run(AM, alertmanager.signals(AM, ALERTMANAGER_V4, NOW + timedelta(minutes=1)))
    assert [e["id"] for e in first] == [e["id"] for e in retried]
    assert [e["subject"] for e in first] == [e["subject"] for e in retried]
    other = fresh(ALERTMANAGER_V4)
    other["alerts"][0]["startsAt"] = "2026-02-06T14:00:00Z"  # another firing of the group
    assert run(AM, alertmanager.signals(AM, other, NOW))[0][0]["subject"] != first[0]["subject"]
    assert (
        run(
            Integration("prom2", "alertmanager", region="au"), alertmanager.signals(AM, ALERTMANAGER_V4, NOW)
        )[0][0]["subject"]
        != first[0]["subject"]
    )


def test_truncated_alerts_never_mean_resolved() -> None:
    _, state = run(AM, alertmanager.signals(AM, ALERTMANAGER_V4, NOW))
    truncated = fresh(ALERTMANAGER_V4)
    truncated["truncatedAlerts"] = 3
    truncated["alerts"][0]["status"] = "resolved"  # the one shown resolved, the group still firing
    events, _ = run(AM, alertmanager.signals(AM, truncated, NOW), state)
    assert [e["type"] for e in events] == ["incident.updated"]


def test_incident_per_alert_makes_one_incident_per_fingerprint() -> None:
    per_alert = Integration("g", "grafana", region="us", incident_per="alert", hmac_secret="s")
    events, state = run(per_alert, grafana.signals(per_alert, GRAFANA, NOW))
    assert [e["type"] for e in events] == ["incident.reported"] * 2
    assert len({e["subject"] for e in events}) == 2
    one_resolved = fresh(GRAFANA)
    one_resolved["alerts"][1].update(status="resolved", endsAt="2026-10-12T10:00:00Z")
    events, _ = run(per_alert, grafana.signals(per_alert, one_resolved, NOW), state)
    assert [e["type"] for e in events] == ["incident.restored"]


def test_grafana_payload_maps_like_alertmanager_with_its_own_fields_ignored() -> None:
    integration = Integration("g", "grafana", region="us", hmac_secret="s")
    (event,), _ = run(integration, grafana.signals(integration, GRAFANA, NOW))
    assert event["source"] == "/channels/monitor/grafana/g"
    assert event["data"]["summary"] == "This alert was triggered for zone us-1"
    assert event["data"]["severity"] == "high"  # no severity label: the integration's default
    assert event["time"] == "2026-10-12T07:51:03.157076Z"  # the earliest startsAt, in UTC


@pytest.mark.parametrize("stamp", [None, "1760000000"])
def test_grafana_hmac_signature_checked_with_and_without_timestamp(stamp: str | None) -> None:
    integration = Integration(
        "g", "grafana", region="us", hmac_secret="s3cret", hmac_timestamp_header="X-Ts" if stamp else None
    )
    body = b'{"status":"firing"}'
    signed = (stamp.encode() + b":" + body) if stamp else body
    good = hmac.new(b"s3cret", signed, hashlib.sha256).hexdigest()
    headers = {"x-grafana-alerting-signature": good, **({"x-ts": stamp} if stamp else {})}
    grafana.check_signature(integration, headers, body, now=1760000000.0)
    with pytest.raises(grafana.SignatureError, match="does not match"):
        grafana.check_signature(integration, headers, body + b" ", now=1760000000.0)
    with pytest.raises(grafana.SignatureError, match="missing"):
        grafana.check_signature(integration, {}, body, now=1760000000.0)
    if stamp:
        with pytest.raises(grafana.SignatureError, match="old"):
            grafana.check_signature(integration, headers, body, now=1760000000.0 + 3600)


def test_region_and_severity_from_labels_with_map_and_default() -> None:
    integration = Integration("p", "alertmanager", region=None, region_label="dc", region_map={"syd": "au"},
                              severity_map={"warning": "low"}, severity_default="high")  # fmt: skip
    payload = fresh(ALERTMANAGER_V4)
    payload["commonLabels"] = {"dc": "syd", "severity": "warning"}
    payload["alerts"][0]["labels"] = {"dc": "syd", "severity": "warning"}
    (signal,) = alertmanager.signals(integration, payload, NOW)
    assert (signal.region, signal.severity) == ("au", "low")
    payload["commonLabels"] = payload["alerts"][0]["labels"] = {"dc": "mars"}
    with pytest.raises(PayloadError, match="not a region") as caught:
        alertmanager.signals(integration, payload, NOW)
    assert caught.value.status == 422


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"status": "burning"}, "status"),
        ({"alerts": []}, "alerts"),
        ({"alerts": ["x"]}, r"alerts\[0\]"),
        ({"groupKey": None}, "groupKey"),
        ({"commonLabels": [1]}, "commonLabels"),
    ],
)
def test_a_malformed_alertmanager_payload_says_which_field(change: dict, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        alertmanager.signals(AM, {**ALERTMANAGER_V4, **change}, NOW)
    with pytest.raises(PayloadError, match="JSON object"):
        alertmanager.signals(AM, [1, 2], NOW)


def test_a_summary_is_cut_and_cleaned_to_what_the_contract_takes() -> None:
    payload = fresh(ALERTMANAGER_V4)
    payload["commonAnnotations"] = {"summary": "down\x00\x07 " + "x" * 9000}
    (event,), _ = run(AM, alertmanager.signals(AM, payload, NOW))
    assert len(event["data"]["summary"]) == 4096 and "\x00" not in event["data"]["summary"]


def test_pagerduty_trigger_acknowledge_resolve_and_dedup() -> None:
    trigger = pagerduty.parse_event(PAGERDUTY_TRIGGER)
    (reported,), state = run(PD, [pagerduty.signal(PD, trigger, NOW)])
    assert reported["type"] == "incident.reported"
    assert reported["data"] == {
        "severity": "low",
        "region": "uk",
        "summary": "Example alert on host1.example.com",
    }
    assert reported["time"] == "2026-07-17T08:42:58.315000Z"
    assert run(PD, [pagerduty.signal(PD, trigger, NOW)], state)[0] == []  # same dedup_key, same alert
    ack = pagerduty.parse_event(
        {"routing_key": "k", "dedup_key": "samplekeyhere", "event_action": "acknowledge"}
    )
    (acked,), state = run(PD, [pagerduty.signal(PD, ack, NOW)], state)
    assert acked["type"] == "incident.acknowledged" and acked["subject"] == reported["subject"]
    assert run(PD, [pagerduty.signal(PD, ack, NOW)], state)[0] == []
    resolve = pagerduty.parse_event(
        {"routing_key": "k", "dedup_key": "samplekeyhere", "event_action": "resolve"}
    )
    (restored,), state = run(PD, [pagerduty.signal(PD, resolve, NOW)], state)
    assert restored["type"] == "incident.restored" and restored["subject"] == reported["subject"]
    assert run(PD, [pagerduty.signal(PD, resolve, NOW)], state)[0] == []  # PagerDuty drops it too
    (again,), _ = run(PD, [pagerduty.signal(PD, trigger, NOW)], state)
    assert again["type"] == "incident.reported" and again["subject"] != reported["subject"]


def test_pagerduty_trigger_without_dedup_key_gets_one_from_its_content() -> None:
    body = {k: v for k, v in PAGERDUTY_TRIGGER.items() if k != "dedup_key"}
    assert pagerduty.parse_event(body).dedup_key == pagerduty.parse_event(fresh(body)).dedup_key
    other = fresh(body)
    other["payload"]["summary"] = "another problem"
    assert pagerduty.parse_event(other).dedup_key != pagerduty.parse_event(body).dedup_key


def test_pagerduty_invalid_events_list_every_problem() -> None:
    with pytest.raises(pagerduty.InvalidEvent) as caught:
        pagerduty.parse_event({"event_action": "explode", "payload": {"severity": "bad"}})
    assert any("routing_key" in e for e in caught.value.errors)
    assert any("event_action" in e for e in caught.value.errors)
    with pytest.raises(pagerduty.InvalidEvent) as caught:
        pagerduty.parse_event({"routing_key": "k", "event_action": "trigger", "payload": {"severity": "bad"}})
    assert {e.split("'")[1] for e in caught.value.errors} == {
        "payload.summary",
        "payload.source",
        "payload.severity",
    }
    with pytest.raises(pagerduty.InvalidEvent, match="dedup_key"):
        pagerduty.parse_event({"routing_key": "k", "event_action": "resolve"})

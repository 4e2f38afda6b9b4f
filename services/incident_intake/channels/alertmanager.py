"""Prometheus Alertmanager's webhook (`webhook_config`, payload version 4) as signals.

One incident per alert group (`groupKey`) by default, or per alert (`fingerprint`) with
`incident_per: alert`. The group's own `status` decides: `resolved` only when every alert of the
group is; `truncatedAlerts` (alerts left out of the payload) never means they resolved.
Grafana's webhook is this payload plus fields of its own (see `grafana.py`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from incident_intake.channels.common import PayloadError, clean_text, parse_time, region_of, severity_of
from incident_intake.integrations import Integration
from incident_intake.keys import digest
from incident_intake.tracking import Signal

__all__ = ["parse_webhook", "signals"]

_RANK = {"critical": 0, "high": 1, "low": 2}


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise PayloadError(f"{where}: expected an object, got {type(value).__name__}")
    return value


def parse_webhook(body: Any) -> dict[str, Any]:
    """The payload's fields checked for shape (400 with the field when wrong); alerts as a list."""
    if not isinstance(body, dict):
        raise PayloadError("the body must be a JSON object (Alertmanager webhook payload)")
    status = body.get("status")
    if status not in ("firing", "resolved"):
        raise PayloadError(f"status: expected 'firing' or 'resolved', got {status!r}")
    alerts = body.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise PayloadError("alerts: expected a non-empty list of alerts")
    for index, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise PayloadError(f"alerts[{index}]: expected an object")
        if alert.get("status") not in ("firing", "resolved"):
            raise PayloadError(f"alerts[{index}].status: expected 'firing' or 'resolved'")
        _mapping(alert.get("labels"), f"alerts[{index}].labels")
        _mapping(alert.get("annotations"), f"alerts[{index}].annotations")
    for name in ("groupLabels", "commonLabels", "commonAnnotations"):
        _mapping(body.get(name), name)
    if not isinstance(body.get("groupKey"), str) or not body["groupKey"]:
        raise PayloadError("groupKey: expected a non-empty string")
    return body


def _summary(body: dict[str, Any], alerts: list[dict[str, Any]]) -> str:
    """From the annotations (`summary`, then `description`), else Grafana's title, else the alert name."""
    candidates = [body.get("commonAnnotations") or {}, *[a.get("annotations") or {} for a in alerts]]
    for field in ("summary", "description"):
        for notes in candidates:
            if notes.get(field):
                return clean_text(notes[field])
    if body.get("title"):
        return clean_text(body["title"])
    labels = body.get("commonLabels") or (alerts[0].get("labels") if alerts else None) or {}
    return clean_text(f"alert {labels.get('alertname', 'unnamed')} is firing")


def _fingerprint(alert: dict[str, Any]) -> str:
    if isinstance(alert.get("fingerprint"), str) and alert["fingerprint"]:
        return str(alert["fingerprint"])
    labels = alert.get("labels") or {}
    return digest(*(f"{k}={labels[k]}" for k in sorted(labels)))


def _names(alerts: list[dict[str, Any]]) -> str:
    names = sorted({str((a.get("labels") or {}).get("alertname", _fingerprint(a))) for a in alerts})
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def _severity(integration: Integration, alerts: list[dict[str, Any]], common: dict[str, Any]) -> str:
    values = [(a.get("labels") or {}).get(integration.severity_label) for a in alerts]
    mapped = [severity_of(integration, v) for v in values] or [
        severity_of(integration, common.get(integration.severity_label))
    ]
    return min(mapped, key=_RANK.__getitem__)  # the most severe alert of the group


def _latest_end(alerts: list[dict[str, Any]], now: datetime) -> datetime:
    ends = [parse_time(a.get("endsAt"), f"alerts[{i}].endsAt", now) for i, a in enumerate(alerts)]
    return max(ends, default=now)


def signals(integration: Integration, body: Any, now: datetime) -> list[Signal]:
    """The signals of one webhook notification (one per group, or one per alert)."""
    body = parse_webhook(body)
    if integration.incident_per == "alert":
        return [_alert_signal(integration, body, alert, i, now) for i, alert in enumerate(body["alerts"])]
    alerts: list[dict[str, Any]] = body["alerts"]
    if body["status"] == "resolved":
        note = clean_text(f"resolved at the monitor: {_names(alerts)}")
        return [Signal(body["groupKey"], "resolve", _latest_end(alerts, now), note=note)]
    firing = [a for a in alerts if a["status"] == "firing"] or alerts
    starts = [parse_time(a.get("startsAt"), f"alerts[{i}].startsAt", now) for i, a in enumerate(firing)]
    start = min(starts)
    common = body.get("commonLabels") or {}
    truncated = body.get("truncatedAlerts") or 0
    fingerprints = sorted(_fingerprint(a) for a in firing)
    resolved = [a for a in alerts if a["status"] == "resolved"]
    note = (
        f"{len(firing) + (truncated if isinstance(truncated, int) else 0)} alert(s) firing: {_names(firing)}"
    )
    if resolved:
        note += f"; resolved: {_names(resolved)}"
    return [
        Signal(
            key=body["groupKey"],
            action="trigger",
            time=start,
            starts_at=start.isoformat(),
            summary=_summary(body, firing),
            severity=_severity(integration, firing, common),
            region=region_of(integration, {**(firing[0].get("labels") or {}), **common}),
            digest=digest(*fingerprints, f"+{truncated}"),
            note=clean_text(note),
        )
    ]


def _alert_signal(
    integration: Integration, body: dict[str, Any], alert: dict[str, Any], i: int, now: datetime
) -> Signal:
    key = _fingerprint(alert)
    if alert["status"] == "resolved":
        end = parse_time(alert.get("endsAt"), f"alerts[{i}].endsAt", now)
        return Signal(key, "resolve", end, note=clean_text(f"resolved at the monitor: {_names([alert])}"))
    start = parse_time(alert.get("startsAt"), f"alerts[{i}].startsAt", now)
    labels = alert.get("labels") or {}
    return Signal(
        key=key,
        action="trigger",
        time=start,
        starts_at=start.isoformat(),
        summary=_summary({"title": body.get("title")}, [alert]),
        severity=severity_of(integration, labels.get(integration.severity_label)),
        region=region_of(integration, labels),
        digest=key,
    )

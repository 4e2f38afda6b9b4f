"""What each destination receives: the signed CloudEvent (webhook), a Block Kit message (Slack), an
email with `Message-ID` and an `[INC-…]` subject token, a PagerDuty Events v2 event."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

TITLES = {
    "incident.sla.warning": "SLA warning",
    "incident.sla.breached": "SLA breached",
    "incident.failover.required": "Failover required",
    "incident.sla.retracted": "Breach retracted",
    "incident.state.changed": "Incident update",
}
CLOCK_TEXT = {"ack": "acknowledge", "restore": "restore", "resolution": "resolution", "update": "update"}


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


def _span(seconds: float) -> str:
    seconds = abs(int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min"
    return f"{secs} s"


def headline(event: dict[str, Any], now: datetime | None = None) -> str:
    """One line a person understands: what, which clock, how late or how soon."""
    data = event.get("data") or {}
    now = now or datetime.now(UTC)
    kind = event.get("type", "")
    incident = event.get("subject", "?")
    clock = CLOCK_TEXT.get(data.get("clock", ""), data.get("clock", ""))
    if kind == "incident.sla.warning":
        deadline = _time(data.get("deadline"))
        share = f"{round(float(data.get('threshold', 0)) * 100)} %"
        when = ""
        if deadline is not None:
            left = (deadline - now).total_seconds()
            when = f", breaches in {_span(left)}" if left > 0 else f", breached {_span(left)} ago"
        return f"{incident}: {share} of the {clock} SLA used{when}"
    due = _time(data.get("due_at"))
    late = f" ({_span((now - due).total_seconds())} late)" if due is not None and now > due else ""
    if kind == "incident.sla.breached":
        return f"{incident}: {clock} SLA breached{late}"
    if kind == "incident.failover.required":
        return f"{incident}: failover required, restore SLA breached{late}"
    if kind == "incident.sla.retracted":
        return f"{incident}: {clock} breach retracted (the clock stopped in time)"
    if kind == "incident.state.changed":
        was = f" (was {data['from']})" if data.get("from") else ""
        return f"{incident}: {str(data.get('to', '?')).replace('_', ' ')}{was}"
    return f"{incident}: {kind}"


def incident_link(event: dict[str, Any], links_url: str | None) -> str | None:
    """The incident's page: `links_url` with `{id}` replaced (e.g. the console's
    `https://host/console/incident?id={id}`), else `<links_url>/incidents/<id>` (the read API)."""
    if not links_url:
        return None
    incident = quote(str(event.get("subject", "")), safe="")
    if "{id}" in links_url:
        return links_url.replace("{id}", incident)
    return f"{links_url.rstrip('/')}/incidents/{incident}"


def _facts(event: dict[str, Any]) -> list[tuple[str, str]]:
    data = event.get("data") or {}
    facts = [
        ("Severity", str(data.get("severity") or "–")),
        ("Region", str(data.get("region") or "–").upper()),
        ("Policy", str(data.get("policy") or "–")),
    ]
    if data.get("clock"):
        facts.append(("Clock", str(data["clock"])))
    if data.get("due_at"):
        facts.append(
            ("Due at" if event.get("type") != "incident.sla.warning" else "Threshold at", str(data["due_at"]))
        )
    if data.get("deadline"):
        facts.append(("Breaches at", str(data["deadline"])))
    if data.get("source"):
        facts.append(("Reported via", str(data["source"])))
    return facts


def mrkdwn_escape(text: str) -> str:
    """Slack mrkdwn control characters as entities: untrusted text (a summary from an email subject,
    an SMS) shows as text, never as `<!channel>`, a mention or a disguised link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(
    event: dict[str, Any], links_url: str | None, now: datetime | None = None
) -> dict[str, Any]:
    """A Block Kit message: header, the summary, the facts, a link button; `text` is the fallback."""
    data = event.get("data") or {}
    title = TITLES.get(event.get("type", ""), event.get("type", ""))
    line = mrkdwn_escape(headline(event, now))
    summary = mrkdwn_escape(str(data.get("summary") or "(no summary)"))
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": f"{title}: {event.get('subject', '')}"[:150]},
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{line}*\n>{summary}"[:3000]}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*{name}*\n{mrkdwn_escape(value)}"[:2000]}
                for name, value in _facts(event)
            ][:10],
        },
    ]
    link = incident_link(event, links_url)
    if link:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {"type": "button", "text": {"type": "plain_text", "text": "Open incident"}, "url": link}
                ],
            }
        )
    event_id = mrkdwn_escape(str(event.get("id", "")))
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": f"event `{event_id}`"}]})
    return {"text": f"{mrkdwn_escape(str(title))}: {line}", "blocks": blocks}


def subject_token(incident_id: str) -> str:
    """`[INC-…]`: the token the email intake reads to thread a reply into the incident."""
    return f"[{incident_id}]" if incident_id.startswith("INC-") else f"[INC-{incident_id}]"


def email_message(
    event: dict[str, Any], destination: str, sender: str, to: tuple[str, ...], links_url: str | None
) -> EmailMessage:
    """The email of one output to one destination; its `Message-ID` is stable across retries."""
    data = event.get("data") or {}
    title = TITLES.get(event.get("type", ""), event.get("type", ""))
    incident = str(event.get("subject", ""))
    message = EmailMessage()
    message["Subject"] = f"{subject_token(incident)} {title}: {data.get('summary') or incident}"[:300]
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = f"<{event.get('id', '')}.{destination}@incident-notifier>"
    message["X-Incident-Id"] = incident
    lines = [headline(event), "", str(data.get("summary") or ""), ""]
    lines += [f"{name}: {value}" for name, value in _facts(event)]
    link = incident_link(event, links_url)
    if link:
        lines += ["", f"Incident: {link}"]
    lines += [
        "",
        "Reply to this email to add to the incident (keep the subject's token).",
        f"Event id: {event.get('id', '')}",
    ]
    message.set_content("\n".join(lines))
    return message


PD_SEVERITY = {"critical": "critical", "high": "error", "low": "warning"}
# The clocks a state stops (design §4/§5): the pages of their breaches resolve with it.
STOPPED_CLOCKS = {
    "acknowledged": ("ack",),
    "investigating": ("ack",),
    "failed_over": ("ack", "restore", "resolution"),
    "restored": ("ack", "restore", "resolution", "update"),
}


def pagerduty_events(event: dict[str, Any], routing_key: str, links_url: str | None) -> list[dict[str, Any]]:
    """The PagerDuty events of one output: one trigger or resolve, or for a state change the resolves
    of the clocks it stopped (none for a state that stops none)."""
    if event.get("type") == "incident.state.changed":
        state = str((event.get("data") or {}).get("to"))
        incident = event.get("subject", "")
        return [
            {"routing_key": routing_key, "event_action": "resolve", "dedup_key": f"{incident}/{clock}"}
            for clock in STOPPED_CLOCKS.get(state, ())
        ]
    return [pagerduty_event(event, routing_key, links_url)]


def pagerduty_event(event: dict[str, Any], routing_key: str, links_url: str | None) -> dict[str, Any]:
    """A PagerDuty Events v2 event: trigger for a breach or failover order, resolve for a retraction;
    the dedup key is (incident, clock), so a retraction resolves the alert its breach opened."""
    data = event.get("data") or {}
    kind = event.get("type", "")
    clock = data.get("clock") or "restore"  # a failover order is the restore clock's
    dedup_key = f"{event.get('subject', '')}/{clock}"
    if kind == "incident.sla.retracted":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": dedup_key}
    body: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": dedup_key,
        "payload": {
            "summary": f"{headline(event)}: {data.get('summary') or ''}"[:1024],
            "source": str(data.get("source") or "incident-sla-engine"),
            "severity": PD_SEVERITY.get(
                str(data.get("severity")), "warning" if kind == "incident.sla.warning" else "error"
            ),
            "timestamp": str(event.get("time", "")),
            "component": str(data.get("region") or ""),
            "group": str(data.get("policy") or ""),
            "class": kind,
            "custom_details": {**data, "event_id": event.get("id")},
        },
    }
    link = incident_link(event, links_url)
    if link:
        body["links"] = [{"href": link, "text": "Incident"}]
    return body

"""Which destinations an output goes to: every route whose `match` it meets, destinations once each."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from incident_notifier.config import RoutingConfig

STATE_CHANGED = "incident.state.changed"
NOTIFIED_TYPES = frozenset(
    {"incident.sla.warning", "incident.sla.breached", "incident.failover.required", "incident.sla.retracted",
     STATE_CHANGED}
)  # fmt: skip


def _value(event: Mapping[str, Any], key: str) -> Any:
    if key == "type":
        return event.get("type")
    data = event.get("data")
    if key == "state":
        key = "to"  # the state an incident.state.changed moved to
    return data.get(key) if isinstance(data, Mapping) else None


def destinations_for(config: RoutingConfig, event: Mapping[str, Any]) -> list[str]:
    """The destination names of `event` in the order routes name them (empty: nobody is told).

    A route matches when every key of its `match` has one of its values; a key the output lacks
    (a failover order has no `threshold`) does not match. State changes (many, mostly routine) go
    only where a route names `incident.state.changed` in its `type`."""
    kind = event.get("type")
    if kind not in NOTIFIED_TYPES:
        return []
    chosen: list[str] = []
    for route in config.routes:
        if kind == STATE_CHANGED and STATE_CHANGED not in route.match.get("type", ()):
            continue
        if all(_value(event, key) in values for key, values in route.match.items()):
            chosen.extend(name for name in route.to if name not in chosen)
    return chosen

"""SMS STATUS: an incident's state and the time left on its clocks, from the engine's read API."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx

__all__ = ["EngineReader", "describe_status"]


class EngineReader:
    """`GET /incidents/{id}` on the engine's HTTP (bearer INCIDENTS_API_TOKEN), bounded by a timeout."""

    def __init__(
        self, base_url: str, token: str | None, *, timeout: float = 5.0, transport: Any = None
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = httpx.AsyncClient(
            base_url=base_url, headers=headers, timeout=timeout, transport=transport
        )

    async def incident(self, incident_id: str) -> dict[str, Any] | None:
        """The engine's view of the incident, None when it does not know it (yet); raises
        httpx.HTTPError when the engine cannot answer."""
        response = await self.client.get(f"/incidents/{incident_id}", params={"timeline_limit": 1})
        if response.status_code == 404:
            return None
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    async def close(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()


def _minutes(seconds: float) -> str:
    minutes = round(abs(seconds) / 60)
    text = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
    return f"{text} left" if seconds >= 0 else f"overdue by {text}"


def describe_status(number: str, body: dict[str, Any], timezone: str) -> str:
    """One SMS: `INC-1042 acknowledged (critical, au). restore: 12 min left (due 14:32 AEDT); ack: met`."""
    zone = ZoneInfo(timezone)
    clocks = []
    for name, clock in sorted(body.get("clocks", {}).items()):
        if clock.get("stopped_at") is None:
            left = clock.get("remaining_business_seconds")
            left = clock.get("remaining_seconds") if left is None else left
            due = datetime.fromisoformat(clock["due_at"]).astimezone(zone)
            when = (
                f"due {due:%H:%M %Z}"
                if left is not None and abs(left) < 86_400
                else f"due {due:%a %d %b %H:%M %Z}"
            )
            clocks.append(f"{name}: {_minutes(left or 0.0)} ({when})")
        else:
            clocks.append(f"{name}: {clock.get('status')}")
    head = f"{number} {body.get('state')} ({body.get('severity')}, {body.get('region')})."
    return f"{head} {'; '.join(clocks)}" if clocks else head

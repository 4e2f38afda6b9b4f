"""The SRE console: a live board of open incidents and their SLA clocks, incident pages and actions.

Served by the engine's HTTP server (same port, same token as the read API); reads through a
`ConsoleBackend` the engine implements, publishes input events to Kafka like any channel, and never
writes PostgreSQL.
"""

from incident_console.app import ConsoleConfig, console_app
from incident_console.backend import (
    ClockView,
    ConsoleBackend,
    IncidentDetail,
    IncidentSummary,
    TimelineEntry,
    TimerView,
    WhatIfView,
)

__all__ = [
    "ClockView",
    "ConsoleBackend",
    "ConsoleConfig",
    "IncidentDetail",
    "IncidentSummary",
    "TimelineEntry",
    "TimerView",
    "WhatIfView",
    "console_app",
]

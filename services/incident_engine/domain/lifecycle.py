"""The incident lifecycle (design §4): one transition table driving one shared `transitions.Machine`."""

from __future__ import annotations

from functools import cache
from typing import Final

from transitions import Machine

from incident_contracts.constants import (
    STATE_ACKNOWLEDGED,
    STATE_FAILED_OVER,
    STATE_INVESTIGATING,
    STATE_REPORTED,
    STATE_RESTORED,
    STATES,
)

# Triggers are the input event types without their `incident.` prefix. `reported` creates an incident
# (the initial state); `updated` is an internal transition: allowed, but no state change.
TRIGGER_REPORTED: Final = "reported"
TRIGGER_UPDATED: Final = "updated"
TRIGGERS: Final = ("acknowledged", "investigating", "failed_over", "restored", TRIGGER_UPDATED)

# The table of design §4. `dest: None` is an internal transition (the state stays).
TRANSITIONS: Final[tuple[dict[str, object], ...]] = (
    {"trigger": "acknowledged", "source": STATE_REPORTED, "dest": STATE_ACKNOWLEDGED},
    {"trigger": "investigating", "source": STATE_REPORTED, "dest": STATE_INVESTIGATING},  # implies ack
    {"trigger": "investigating", "source": STATE_ACKNOWLEDGED, "dest": STATE_INVESTIGATING},
    {
        "trigger": "failed_over",
        "source": [STATE_REPORTED, STATE_ACKNOWLEDGED, STATE_INVESTIGATING],
        "dest": STATE_FAILED_OVER,
    },
    {
        "trigger": "restored",
        "source": [STATE_REPORTED, STATE_ACKNOWLEDGED, STATE_INVESTIGATING, STATE_FAILED_OVER],
        "dest": STATE_RESTORED,
    },
    {
        "trigger": TRIGGER_UPDATED,
        "source": [STATE_REPORTED, STATE_ACKNOWLEDGED, STATE_INVESTIGATING, STATE_FAILED_OVER],
        "dest": None,
    },
)

# The one shared Machine, without models: incidents are plain records (load state, look up, save).
MACHINE: Final = Machine(
    model=None,
    states=list(STATES),
    transitions=[dict(t) for t in TRANSITIONS],
    initial=STATE_REPORTED,
    auto_transitions=False,
    send_event=False,
)

# A trigger that lands in the state it is named after: repeating it in that state is a `duplicate`.
TRIGGER_TARGET: Final = {
    "acknowledged": STATE_ACKNOWLEDGED,
    "investigating": STATE_INVESTIGATING,
    "failed_over": STATE_FAILED_OVER,
    "restored": STATE_RESTORED,
}


class Outcome:
    """What a trigger does in a state: move to `dest`, stay (internal), or be rejected."""

    MOVE: Final = "move"
    STAY: Final = "stay"
    DUPLICATE: Final = "duplicate"
    INVALID: Final = "invalid_transition"


@cache
def transition(state: str, trigger: str) -> tuple[str, str | None]:
    """(outcome, destination) of `trigger` in `state`, read from the shared Machine and memoized."""
    event = MACHINE.events.get(trigger)
    found = event.transitions.get(state, []) if event is not None else []
    if found:
        dest = found[0].dest
        return (Outcome.STAY, None) if dest is None else (Outcome.MOVE, dest)
    if TRIGGER_TARGET.get(trigger) == state:
        return Outcome.DUPLICATE, None
    return Outcome.INVALID, None


def trigger_of(event_type: str) -> str:
    """The lifecycle trigger of an input event type (`incident.acknowledged` -> `acknowledged`)."""
    return event_type.removeprefix("incident.")


def mermaid() -> str:
    """The lifecycle as a Mermaid stateDiagram, generated from the transition table."""
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {STATE_REPORTED}: reported"]
    for row in TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        for source in sources:
            dest = row["dest"] or source
            lines.append(f"    {source} --> {dest}: {row['trigger']}")
    lines.append(f"    {STATE_RESTORED} --> [*]")
    lines.append("```")
    return "\n".join(lines)

"""The voice menu's TwiML: each step says what to do and posts the answer to the next step."""

from __future__ import annotations

from urllib.parse import urlencode

from twilio.twiml.voice_response import Gather, VoiceResponse

__all__ = ["SEVERITY_KEYS", "ask_number", "ask_severity", "ask_summary", "goodbye", "main_menu", "step_url"]

SEVERITY_KEYS = {"1": "critical", "2": "high", "3": "low"}


def step_url(path: str, step: str, **params: str) -> str:
    """The relative URL of a menu step (Twilio resolves it against the URL it called)."""
    return f"{path}?{urlencode({'step': step, **params})}"


def main_menu(path: str) -> str:
    """Greeting and the three choices."""
    response = VoiceResponse()
    gather = Gather(num_digits=1, action=step_url(path, "menu"), method="POST", timeout=8)
    gather.say(
        "Incident line. To report a new incident, press 1. To acknowledge an incident, press 2. "
        "To report an incident restored, press 3."
    )
    response.append(gather)
    response.say("No choice received. Goodbye.")
    response.hangup()
    return str(response)


def ask_severity(path: str) -> str:
    """The severity of the new incident, one key."""
    response = VoiceResponse()
    gather = Gather(num_digits=1, action=step_url(path, "severity"), method="POST", timeout=8)
    gather.say("For a critical incident, press 1. For high, press 2. For low, press 3.")
    response.append(gather)
    response.redirect(step_url(path, "start"), method="POST")
    return str(response)


def ask_summary(path: str, severity: str) -> str:
    """The caller's speech becomes the summary; silence falls through to a fixed text."""
    response = VoiceResponse()
    action = step_url(path, "summary", severity=severity)
    gather = Gather(input="speech", action=action, method="POST", speech_timeout="auto", timeout=6)
    gather.say(f"Severity {severity}. After the tone, say in one sentence what is wrong.")
    response.append(gather)
    response.redirect(action, method="POST")
    return str(response)


def ask_number(path: str, step: str, what: str) -> str:
    """The incident number on the keypad, ended by the hash key."""
    response = VoiceResponse()
    gather = Gather(finish_on_key="#", action=step_url(path, step), method="POST", timeout=10)
    gather.say(f"Enter the number of the incident to {what}, then press hash.")
    response.append(gather)
    response.say("No number received. Goodbye.")
    response.hangup()
    return str(response)


def goodbye(text: str) -> str:
    """Say `text` and hang up."""
    response = VoiceResponse()
    response.say(text)
    response.hangup()
    return str(response)

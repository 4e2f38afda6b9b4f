"""Configured URLs are checked where they are read: the intake's phone lines and engine URL (the
notifier's destinations: test_notifier.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from incident_intake.people_settings import PeopleSettings
from incident_platform.urls import url_problem

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("url", "https_only", "problem"),
    [
        ("https://hooks.slack.com/services/x", True, None),
        ("http://127.0.0.1:9100/failover", True, None),
        ("http://localhost/x", True, None),
        ("http://[::1]:8080/x", True, None),
        ("http://failover.example.com/hook", False, None),
        ("http://failover.example.com/hook", True, "must be https"),
        ("notaurl", False, "is not an http(s) URL (scheme none)"),
        ("mailto:a@example.com", False, "is not an http(s) URL (scheme 'mailto:')"),
        ("https://", False, "has no host"),
        ("https://host:port/x", False, "is not a valid URL"),
        (" https://host/x", False, "is not a URL: it contains white space"),
    ],
)
def test_url_problem(url: str, https_only: bool, problem: str | None) -> None:
    found = url_problem(url, https_only=https_only)
    assert found == problem if problem is None else (found or "").startswith(problem)


def test_the_intake_refuses_an_engine_url_that_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INTAKE_ENGINE_URL", "127.0.0.1:8080")
    with pytest.raises(ValidationError, match=r"(?i)intake_engine_url") as caught:
        PeopleSettings()
    assert "is not an http(s) URL" in str(caught.value)
    monkeypatch.setenv("INTAKE_ENGINE_URL", "http://127.0.0.1:8080")
    assert PeopleSettings().intake_engine_url == "http://127.0.0.1:8080"


def test_the_intake_refuses_a_phone_line_url_without_a_host(monkeypatch: pytest.MonkeyPatch) -> None:
    line = '{"number": "+61200000000", "region": "au", "timezone": "Australia/Sydney", "public_url": "%s"}'
    monkeypatch.setenv("INTAKE_PHONE_LINES", '{"au": ' + line % "https:///voice" + "}")
    with pytest.raises(ValidationError) as caught:
        PeopleSettings()
    assert "public_url" in str(caught.value) and "has no host" in str(caught.value)
    monkeypatch.setenv("INTAKE_PHONE_LINES", '{"au": ' + line % "https://intake.example.com" + "}")
    assert PeopleSettings().intake_phone_lines["au"].public_url == "https://intake.example.com"

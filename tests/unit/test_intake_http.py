"""The intake's HTTP answers, with its in-memory twins: every refusal a JSON 4xx/503, never a 500."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from incident_intake.http import create_app
from incident_intake.integrations import IntegrationsError, load_integrations
from incident_intake.publish import MemoryPublisher
from incident_intake.service import IntakeService
from incident_intake.settings import IntakeSettings
from incident_intake.store import MemoryStore
from incident_platform.telemetry import create_providers
from tests.unit.intake_payloads import ALERTMANAGER_V4, PAGERDUTY_TRIGGER, resolved

pytestmark = pytest.mark.unit

CONFIG = """
integrations:
  prom:
    kind: alertmanager
    region: au
    auth: {bearer_token: "${TEST_TOKEN}"}
  basic:
    kind: alertmanager
    region: us
    auth: {basic: {username: am, password: {file: pw.txt}}}
  slow:
    kind: alertmanager
    region: uk
    auth: {bearer_token: t}
    rate_limit: {per_second: 0.01, burst: 1}
  pd:
    kind: pagerduty
    region: uk
    routing_key: R0UTINGKEY
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "pw.txt").write_text("pass\n")
    path = tmp_path / "integrations.yaml"
    path.write_text(CONFIG)
    return path


class Twin:
    def __init__(self, config: Path) -> None:
        settings = IntakeSettings(intake_max_body_bytes=4096)
        self.publisher = MemoryPublisher()
        self.store = MemoryStore()
        self.providers = create_providers("intake-test", span_exporters=[])
        integrations = load_integrations(config, {"TEST_TOKEN": "tok"})
        service = IntakeService(settings, integrations, self.store, self.publisher)
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(service, self.providers)), base_url="http://intake"
        )


@pytest.fixture
async def twin(config: Path) -> AsyncIterator[Twin]:
    twin = Twin(config)
    async with twin.client:
        yield twin
    twin.providers.shutdown()


BEARER = {"Authorization": "Bearer tok"}


async def test_an_alert_is_accepted_once_published_and_a_repeat_adds_nothing(twin: Twin) -> None:
    answer = await twin.client.post("/v1/alertmanager/prom", json=ALERTMANAGER_V4, headers=BEARER)
    assert answer.status_code == 200, answer.text
    (alert,) = answer.json()["alerts"]
    assert alert["outcome"] == "reported"
    assert [e["type"] for e in twin.publisher.events] == ["incident.reported"]
    answer = await twin.client.post("/v1/alertmanager/prom", json=ALERTMANAGER_V4, headers=BEARER)
    assert answer.json()["alerts"][0]["outcome"] == "unchanged"
    answer = await twin.client.post("/v1/alertmanager/prom", json=resolved(ALERTMANAGER_V4), headers=BEARER)
    assert answer.json()["alerts"][0] == {**alert, "outcome": "restored"}
    assert [e["type"] for e in twin.publisher.events] == ["incident.reported", "incident.restored"]


async def test_kafka_down_is_503_with_retry_after_and_nothing_is_remembered(twin: Twin) -> None:
    twin.publisher.down = True
    answer = await twin.client.post("/v1/alertmanager/prom", json=ALERTMANAGER_V4, headers=BEARER)
    assert answer.status_code == 503 and answer.headers["retry-after"] == "30"
    assert "retry" in answer.json()["error"]
    assert all(not t.open for t in twin.store.rows.values())
    twin.publisher.down = False
    answer = await twin.client.post("/v1/alertmanager/prom", json=ALERTMANAGER_V4, headers=BEARER)
    assert answer.json()["alerts"][0]["outcome"] == "reported"
    assert len(twin.publisher.events) == 1


@pytest.mark.parametrize(
    ("path", "headers", "body", "status", "says"),
    [
        ("/v1/alertmanager/prom", {}, ALERTMANAGER_V4, 401, "missing bearer token"),
        ("/v1/alertmanager/prom", {"Authorization": "Bearer no"}, ALERTMANAGER_V4, 401, "wrong bearer token"),
        ("/v1/alertmanager/basic", {"Authorization": "Basic " + base64.b64encode(b"am:bad").decode()},
         ALERTMANAGER_V4, 401, "basic auth"),
        ("/v1/alertmanager/nobody", BEARER, ALERTMANAGER_V4, 404, "no alertmanager integration named 'no"),
        ("/v1/grafana/prom", BEARER, ALERTMANAGER_V4, 404, "no grafana integration"),
        ("/v1/alertmanager/prom", BEARER, b"{not json", 400, "not JSON"),
        ("/v1/alertmanager/prom", BEARER, {"status": "firing"}, 400, "alerts"),
        ("/v1/alertmanager/prom", BEARER, b"x" * 5000, 413, "limit"),
        ("/nowhere", {}, {}, 404, "no endpoint"),
    ],
)  # fmt: skip
async def test_refusals_are_json_errors_that_say_what_is_wrong(
    twin: Twin, path: str, headers: dict, body: object, status: int, says: str
) -> None:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    answer = await twin.client.post(path, content=content, headers=headers)
    assert answer.status_code == status
    assert says in answer.json()["error"]
    assert twin.publisher.events == []


async def test_basic_auth_with_the_secret_from_a_file_is_accepted(twin: Twin) -> None:
    headers = {"Authorization": "Basic " + base64.b64encode(b"am:pass").decode()}
    answer = await twin.client.post("/v1/alertmanager/basic", json=ALERTMANAGER_V4, headers=headers)
    assert answer.status_code == 200, answer.text


async def test_oversized_body_without_content_length_is_refused_too(twin: Twin) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    answer = await twin.client.post("/v1/alertmanager/prom", content=chunks(), headers=BEARER)
    assert answer.status_code == 413


async def test_rate_limit_per_integration_is_429_with_retry_after(twin: Twin) -> None:
    headers = {"Authorization": "Bearer t"}
    first = await twin.client.post("/v1/alertmanager/slow", json=ALERTMANAGER_V4, headers=headers)
    second = await twin.client.post("/v1/alertmanager/slow", json=ALERTMANAGER_V4, headers=headers)
    assert (first.status_code, second.status_code) == (200, 429)
    assert int(second.headers["retry-after"]) >= 1
    other = await twin.client.post("/v1/alertmanager/prom", json=ALERTMANAGER_V4, headers=BEARER)
    assert other.status_code == 200  # another integration is not slowed down


async def test_pagerduty_answers_as_pagerduty_does(twin: Twin) -> None:
    trigger = {**PAGERDUTY_TRIGGER, "routing_key": "R0UTINGKEY"}
    answer = await twin.client.post("/v2/enqueue", json=trigger)
    assert answer.status_code == 202
    assert answer.json() == {"status": "success", "message": "Event processed", "dedup_key": "samplekeyhere"}
    resolve = {"routing_key": "R0UTINGKEY", "dedup_key": "samplekeyhere", "event_action": "resolve"}
    assert (await twin.client.post("/v2/enqueue", json=resolve)).status_code == 202
    assert [e["type"] for e in twin.publisher.events] == ["incident.reported", "incident.restored"]
    bad = await twin.client.post("/v2/enqueue", json={"routing_key": "R0UTINGKEY", "event_action": "trigger"})
    assert bad.status_code == 400
    assert bad.json()["status"] == "invalid event" and bad.json()["errors"]
    unknown = await twin.client.post("/v2/enqueue", json={**trigger, "routing_key": "nope"})
    assert unknown.status_code == 400 and "routing_key" in unknown.json()["errors"][0]
    garbage = await twin.client.post("/v2/enqueue", content=b"]")
    assert garbage.status_code == 400 and garbage.json()["status"] == "invalid event"
    twin.publisher.down = True
    down = await twin.client.post("/v2/enqueue", json={**trigger, "dedup_key": "other"})
    assert down.status_code == 503 and "retry-after" in down.headers


async def test_metrics_count_requests_by_integration_and_outcome(twin: Twin) -> None:
    await twin.client.post("/v1/alertmanager/prom", json=ALERTMANAGER_V4, headers=BEARER)
    await twin.client.post("/v1/alertmanager/prom", json=ALERTMANAGER_V4, headers={})
    text = (await twin.client.get("/metrics")).text
    assert 'intake_requests_total{integration="prom",outcome="accepted"} 1.0' in text
    assert 'intake_requests_total{integration="prom",outcome="unauthorized"} 1.0' in text
    assert "intake_request_duration_seconds_bucket" in text


def test_a_bad_integrations_file_reports_every_error_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "integrations:\n"
        "  Bad Name: {kind: alertmanager, region: au, auth: {bearer_token: x}}\n"
        "  am: {kind: alertmanager, region: mars}\n"
        "  pd: {kind: pagerduty, region: au, routing_key: k, auth: {bearer_token: x}}\n"
    )
    with pytest.raises(IntegrationsError) as caught:
        load_integrations(path, {})
    message = str(caught.value)
    assert str(path) in message
    assert "integrations.am: 'auth' is a required property" in message
    assert "integrations.am.region" in message
    assert "integrations.pd: Additional properties are not allowed ('auth'" in message
    assert "'Bad Name' does not match" in message


def test_a_missing_secret_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "i.yaml"
    path.write_text(CONFIG)
    with pytest.raises(
        IntegrationsError, match=r"integrations.prom.auth.bearer_token: the environment variable TEST_TOKEN"
    ):
        load_integrations(path, {})
    (tmp_path / "pw.txt").write_text("x")
    assert load_integrations(path, {"TEST_TOKEN": "x"}).get("alertmanager", "basic") is not None
    (tmp_path / "pw.txt").unlink()
    with pytest.raises(IntegrationsError, match="cannot read the secret file"):
        load_integrations(path, {"TEST_TOKEN": "x"})


def test_every_missing_secret_is_reported_at_once_saying_how_to_set_it() -> None:
    path = Path(__file__).parents[2] / "deploy/local/integrations.yaml"
    with pytest.raises(IntegrationsError) as caught:
        load_integrations(path, {"INTAKE_GRAFANA_HMAC_SECRET": "b"})
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: 2 problems:"
    assert lines[1].startswith(
        "  integrations.prometheus.auth.bearer_token: the environment variable INTAKE_ALERTMANAGER_TOKEN"
        " is not set: set it to a long random token (e.g. export INTAKE_ALERTMANAGER_TOKEN=$(openssl"
    )
    assert lines[2].startswith(
        "  integrations.pagerduty-compatible.routing_key: the environment variable"
        " INTAKE_PAGERDUTY_ROUTING_KEY is not set: set it to a long random key"
    )
    with pytest.raises(IntegrationsError) as caught:
        load_integrations(path, {})
    assert str(caught.value).splitlines()[0] == f"{path}: 3 problems:"


def test_missing_secrets_and_unreadable_files_are_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "i.yaml"
    path.write_text(
        "integrations:\n"
        "  am: {kind: alertmanager, region: au, auth: {basic: {username: u, password: {file: gone.txt}}}}\n"
        "  graf: {kind: grafana, region: us, hmac: {secret: '${G}'}}\n"
        "  pd1: {kind: pagerduty, region: uk, routing_key: same}\n"
        "  pd2: {kind: pagerduty, region: uk, routing_key: same}\n"
    )
    with pytest.raises(IntegrationsError) as caught:
        load_integrations(path, {})
    message = str(caught.value)
    assert "integrations.am.auth.basic.password: cannot read the secret file" in message
    assert "integrations.graf.hmac.secret: the environment variable G is not set" in message
    assert "two pagerduty integrations share a routing_key" in message
    assert message.startswith(f"{path}: 3 problems:")


def test_the_shipped_example_is_valid() -> None:
    env = {
        "INTAKE_ALERTMANAGER_TOKEN": "a",
        "INTAKE_GRAFANA_HMAC_SECRET": "b",
        "INTAKE_PAGERDUTY_ROUTING_KEY": "c",
    }
    loaded = load_integrations(Path(__file__).parents[2] / "deploy/local/integrations.yaml", env)
    assert {i.kind for i in loaded.by_name.values()} == {"alertmanager", "grafana", "pagerduty"}


def test_the_readme_table_of_intake_variables_is_current() -> None:
    from incident_intake.settings import readme_with_table

    readme = Path(__file__).parents[2] / "README.md"
    text = readme.read_text()
    assert readme_with_table(text) == text, (
        "README's intake variables are stale: run `.venv/bin/python -m incident_intake.settings README.md`"
    )


async def test_grafana_signature_is_checked_over_http(tmp_path: Path) -> None:
    import hashlib
    import hmac

    from tests.unit.intake_payloads import GRAFANA

    path = tmp_path / "g.yaml"
    path.write_text("integrations:\n  graf: {kind: grafana, region: us, hmac: {secret: s3cret}}\n")
    publisher = MemoryPublisher()
    service = IntakeService(IntakeSettings(), load_integrations(path, {}), MemoryStore(), publisher)
    transport = httpx.ASGITransport(app=create_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        body = orjson.dumps(GRAFANA)
        good = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        bad = await client.post(
            "/v1/grafana/graf", content=body, headers={"X-Grafana-Alerting-Signature": "00"}
        )
        assert bad.status_code == 401 and "does not match" in bad.json()["error"]
        assert publisher.events == []
        ok = await client.post(
            "/v1/grafana/graf", content=body, headers={"X-Grafana-Alerting-Signature": good}
        )
        assert ok.status_code == 200, ok.text
        (event,) = publisher.events
        assert event["source"] == "/channels/monitor/grafana/graf"


@pytest.mark.parametrize("content", ["", "  \n\t\n"])
@pytest.mark.parametrize(
    ("secret", "where"),
    [
        ("auth: {bearer_token: {file: empty.txt}}", "integrations.am.auth.bearer_token"),
        ("auth: {basic: {username: am, password: {file: empty.txt}}}", "integrations.am.auth.basic.password"),
    ],
)
def test_an_empty_secret_file_is_refused_at_load_naming_the_integration_and_the_file(
    tmp_path: Path, content: str, secret: str, where: str
) -> None:
    """An empty mounted Secret must stop the intake, never switch authentication off."""
    (tmp_path / "empty.txt").write_text(content)
    path = tmp_path / "i.yaml"
    path.write_text(
        f"integrations:\n  am: {{kind: alertmanager, region: au, {secret}}}\n"
        "  graf: {kind: grafana, region: us, hmac: {secret: s}}\n"
    )
    with pytest.raises(IntegrationsError) as caught:
        load_integrations(path, {})
    message = str(caught.value)
    assert where in message and f"the secret file {tmp_path / 'empty.txt'} is empty" in message
    assert message.startswith(str(path))
    path.write_text("integrations:\n  graf: {kind: grafana, region: us, hmac: {secret: {file: empty.txt}}}\n")
    with pytest.raises(
        IntegrationsError, match=r"integrations.graf.hmac.secret: the secret file .* is empty"
    ):
        load_integrations(path, {})
    path.write_text("integrations:\n  am: {kind: alertmanager, region: au, auth: {bearer_token: '${T}'}}\n")
    with pytest.raises(IntegrationsError, match=r"integrations\.am\.auth\.bearer_token: the secret is empty"):
        load_integrations(path, {"T": content})


async def test_an_empty_offered_credential_never_matches_even_an_empty_secret() -> None:
    """Defence in depth: were an empty secret ever configured, `Bearer ` / `am:` / an empty-key HMAC
    must still be refused (401), and nothing published."""
    import hashlib
    import hmac

    from incident_intake.integrations import Integration, Integrations
    from tests.unit.intake_payloads import GRAFANA

    integrations = Integrations({
        "tok": Integration(name="tok", kind="alertmanager", region="au", bearer_token=""),
        "bas": Integration(name="bas", kind="alertmanager", region="au", basic=("am", "")),
        "graf": Integration(name="graf", kind="grafana", region="au", hmac_secret=""),
        "pd": Integration(name="pd", kind="pagerduty", region="au", routing_key=""),
    })  # fmt: skip
    publisher = MemoryPublisher()
    service = IntakeService(IntakeSettings(), integrations, MemoryStore(), publisher)
    transport = httpx.ASGITransport(app=create_app(service))
    empty_basic = "Basic " + base64.b64encode(b"am:").decode()
    body = orjson.dumps(GRAFANA)
    empty_hmac = hmac.new(b"", body, hashlib.sha256).hexdigest()
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        for path, headers in [
            ("/v1/alertmanager/tok", {"Authorization": "Bearer "}),
            ("/v1/alertmanager/tok", {"Authorization": "Bearer"}),
            ("/v1/alertmanager/bas", {"Authorization": empty_basic}),
            ("/v1/grafana/graf", {"X-Grafana-Alerting-Signature": empty_hmac}),
        ]:
            answer = await client.post(path, content=body, headers=headers)
            assert answer.status_code == 401, (path, answer.text)
        pd = {**PAGERDUTY_TRIGGER, "routing_key": ""}
        assert (await client.post("/v2/enqueue", json=pd)).status_code == 400
    assert publisher.events == []
    assert service.integrations.by_routing_key("") is None

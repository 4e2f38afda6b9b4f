"""The chart's intake: its own Deployment, Service and optional Ingress, valid and wired as the code reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from incident_intake.integrations import validate_document
from incident_intake.people_settings import PeopleSettings
from incident_intake.settings import IntakeSettings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[3]
CHECK = REPO / "deploy" / "helm" / "check.sh"
CHART = REPO / "deploy" / "helm" / "incident-sla-engine"


def _template(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CHECK), "helm", "template", "x", str(CHART), "--kube-version", "1.33.0", *args],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    args = ["--set", "intake.enabled=true,intake.ingress.enabled=true,intake.ingress.host=intake.example.com",
            "--set", "intake.existingSecret=intake-secrets"]  # fmt: skip
    result = _template(*args)
    assert result.returncode == 0, result.stderr
    out = tmp_path_factory.mktemp("helm-intake") / "intake.yaml"
    out.write_text(result.stdout)
    validator = Path(sys.executable).parent / "kubernetes-validate"
    for version in ("1.27.0", "1.37.0"):
        check = subprocess.run([str(validator), "--strict", "--quiet", "-k", version, str(out)],
                               capture_output=True, text=True, check=False)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def _component(docs: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    (found,) = [
        d
        for d in docs
        if d["kind"] == kind and d["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    return found


def test_the_intake_is_off_by_default() -> None:
    result = _template()
    assert result.returncode == 0, result.stderr
    assert "component: intake" not in result.stdout


def test_services_select_their_own_pods_only(rendered: list[dict[str, Any]]) -> None:
    intake_pods = _component(rendered, "Deployment", "intake")["spec"]["template"]["metadata"]["labels"]
    engine_pods = _component(rendered, "Deployment", "engine")["spec"]["template"]["metadata"]["labels"]
    intake_selector = _component(rendered, "Service", "intake")["spec"]["selector"]
    engine_selector = _component(rendered, "Service", "engine")["spec"]["selector"]
    assert (
        intake_selector.items() <= intake_pods.items() and not intake_selector.items() <= engine_pods.items()
    )
    assert (
        engine_selector.items() <= engine_pods.items() and not engine_selector.items() <= intake_pods.items()
    )


def test_the_deployment_runs_incidents_intake_with_its_settings(rendered: list[dict[str, Any]]) -> None:
    pod = _component(rendered, "Deployment", "intake")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["intake"]
    env = {e["name"]: e for e in container["env"]}
    for name in env:
        if name.startswith(("INTAKE_", "INCIDENTS_", "KAFKA_", "DATABASE_")):
            known = name.lower() in IntakeSettings.model_fields or name.lower() in PeopleSettings.model_fields
            assert known, f"{name} is neither an IntakeSettings nor a PeopleSettings field"
    assert container["envFrom"] == [{"secretRef": {"name": "intake-secrets"}}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "integrations")
    assert env["INTAKE_INTEGRATIONS_FILE"]["value"] == f"{mount['mountPath']}/integrations.yaml"
    configmap = _component(rendered, "ConfigMap", "intake")
    assert validate_document(yaml.safe_load(configmap["data"]["integrations.yaml"])) == []


def test_the_ingress_routes_only_the_monitors_and_phone_endpoints(rendered: list[dict[str, Any]]) -> None:
    ingress = _component(rendered, "Ingress", "intake")["spec"]
    (rule,) = ingress["rules"]
    assert rule["host"] == "intake.example.com"
    assert {p["path"] for p in rule["http"]["paths"]} == {
        "/v1/alertmanager", "/v1/grafana", "/v2/enqueue", "/v1/voice", "/v1/sms",
    }  # fmt: skip
    service = _component(rendered, "Service", "intake")["metadata"]["name"]
    assert {p["backend"]["service"]["name"] for p in rule["http"]["paths"]} == {service}


def test_the_support_mailbox_and_phone_lines_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = '{"au": {"number": "+61255550100", "region": "au", "timezone": "Australia/Sydney",' \
            ' "public_url": "https://intake.example.com"}}'  # fmt: skip
    result = _template(
        "--set", "intake.enabled=true,intake.smtp.enabled=true,intake.smtp.tlsSecret=smtp-tls",
        "--set", "intake.smtp.requireStarttls=true,api.existingSecret=api-token",
        "--set-json", f"intake.phone.lines={lines}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    pod = _component(docs, "Deployment", "intake")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    smtp_port = next(p for p in container["ports"] if p["name"] == "smtp")
    service = _component(docs, "Service", "intake-smtp")["spec"]
    assert service["type"] == "LoadBalancer" and service["ports"][0]["port"] == 25
    assert service["ports"][0]["targetPort"] == "smtp"
    pod_labels = _component(docs, "Deployment", "intake")["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    env = {e["name"]: e.get("value") for e in container["env"]}
    for name, value in env.items():
        if name.startswith("INTAKE_") and value is not None:
            monkeypatch.setenv(name, value)
    people = PeopleSettings()  # the rendered values parse as the code reads them
    assert people.intake_smtp_enabled and people.intake_smtp_port == smtp_port["containerPort"]
    assert people.intake_phone_lines["au"].public_url == "https://intake.example.com"
    assert people.intake_engine_url.startswith("http://x-incident-sla-engine:")
    mount = next(m for m in container["volumeMounts"] if m["name"] == "smtp-tls")
    assert str(people.intake_smtp_tls_certfile).startswith(mount["mountPath"])
    assert people.intake_smtp_require_starttls
    assert any(e["name"] == "INCIDENTS_API_TOKEN" for e in container["env"])

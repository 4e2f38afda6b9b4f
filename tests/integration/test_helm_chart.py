"""The Helm chart lints, renders and validates offline, and the manifests say what operators rely on."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from incident_engine.config import Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "deploy" / "helm" / "check.sh"
CHART = REPO / "deploy" / "helm" / "incident-sla-engine"
# The first run builds helm from the Go module proxy (about 1.5 min cold on 2 cores); later runs reuse it.
TIMEOUT = 900

Manifest = dict[str, Any]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CHECK), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("helm")
    validator = Path(sys.executable).parent / "kubernetes-validate"  # the one of this virtualenv
    result = _run(env={"HELM_CHECK_OUT": str(out), "KUBERNETES_VALIDATE": str(validator)})
    assert result.returncode == 0, f"deploy/helm/check.sh failed:\n{result.stdout}\n{result.stderr}"
    assert "chart OK" in result.stderr
    return out


def _docs(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def default(rendered: Path) -> list[Manifest]:
    return _docs(rendered / "default.yaml")


@pytest.fixture(scope="module")
def production(rendered: Path) -> list[Manifest]:
    return _docs(rendered / "production.yaml")


def _one(docs: list[Manifest], kind: str) -> Manifest:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def _engine(docs: list[Manifest]) -> Manifest:
    return _one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def _env(container: Manifest) -> dict[str, Manifest]:
    return {e["name"]: e for e in container["env"]}


def test_kinds(default: list[Manifest], production: list[Manifest]) -> None:
    base = {"ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "Job"}
    assert {d["kind"] for d in default} == base
    assert {d["kind"] for d in production} == base | {
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
        "PrometheusRule",
    }


@pytest.mark.parametrize("values", ["default", "production"])
def test_probes_shutdown_and_hardening(values: str, request: pytest.FixtureRequest) -> None:
    docs: list[Manifest] = request.getfixturevalue(values)
    pod = _one(docs, "Deployment")["spec"]["template"]["spec"]
    engine = _engine(docs)
    assert engine["args"] == ["serve"]
    assert engine["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert engine["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert engine["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert engine["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert engine["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= 60
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert engine["securityContext"]["readOnlyRootFilesystem"] is True
    assert engine["securityContext"]["allowPrivilegeEscalation"] is False
    assert engine["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert engine["resources"]["requests"] and engine["resources"]["limits"]["memory"]
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("values", ["default", "production"])
def test_migration_hook_runs_db_migrate_before_pods(values: str, request: pytest.FixtureRequest) -> None:
    docs: list[Manifest] = request.getfixturevalue(values)
    job = _one(docs, "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["db", "migrate"]
    assert container["image"] == _engine(docs)["image"]
    assert "secretKeyRef" in _env(container)["DATABASE_URL"]["valueFrom"]
    assert job["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # The Service and the PDB must not pick up the migration pod.
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    selector = _one(docs, "Service")["spec"]["selector"]
    assert not selector.items() <= job_labels.items()


def test_service_selects_the_engine_pods(default: list[Manifest]) -> None:
    deployment = _one(default, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        spec = _one(default, kind)["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= pod_labels.items(), kind
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_policies_come_from_the_repository(default: list[Manifest]) -> None:
    data = _one(default, "ConfigMap")["data"]
    shipped = {p.name: p.read_text() for p in (REPO / "policies").glob("*.yaml")}
    assert data == shipped
    engine = _engine(default)
    mount = next(m for m in engine["volumeMounts"] if m["name"] == "policies")
    assert _env(engine)["INCIDENTS_POLICY_DIR"]["value"] == mount["mountPath"]


def test_secrets_are_references_only(production: list[Manifest]) -> None:
    assert not [d for d in production if d["kind"] == "Secret"]
    env = _env(_engine(production))
    for name in ("DATABASE_URL", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "INCIDENTS_API_TOKEN"):
        assert "value" not in env[name] and env[name]["valueFrom"]["secretKeyRef"]["name"], name
    assert env["KAFKA_SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["KAFKA_SSL_CAFILE"]["value"].startswith("/etc/incidents/kafka-tls/")


@pytest.mark.parametrize("values", ["default", "production"])
def test_env_names_are_the_engine_settings(values: str, request: pytest.FixtureRequest) -> None:
    settings = set(Settings.model_fields)
    for name in _env(_engine(request.getfixturevalue(values))):
        if name.startswith(("INCIDENTS_", "KAFKA_", "DATABASE_")):
            assert name.lower() in settings, f"{name} is not a field of incident_engine.config.Settings"


def test_production_autoscaling_and_scraping(production: list[Manifest]) -> None:
    hpa = _one(production, "HorizontalPodAutoscaler")["spec"]
    partitions = int(_env(_engine(production))["INCIDENTS_TOPIC_PARTITIONS"]["value"])
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"] <= partitions
    assert "replicas" not in _one(production, "Deployment")["spec"]  # the HPA owns it
    endpoint = _one(production, "ServiceMonitor")["spec"]["endpoints"][0]
    assert endpoint == {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}


@pytest.fixture
def helm_template(rendered: Path) -> Iterator[Any]:
    def template(*args: str) -> subprocess.CompletedProcess[str]:
        return _run("helm", "template", "x", str(CHART), "--kube-version", "1.33.0", *args)

    yield template


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--set", "securityContext.readOnlyRootFilesystem=false"], "readOnlyRootFilesystem"),
        (["--set", "podSecurityContext.runAsNonRoot=false"], "runAsNonRoot"),
        (["--set", "kafka.securityProtocol=SASL_SSL"], "existingSecret"),
        (["--set", "replicas=3"], "replicas"),  # a typo of replicaCount
        (["--set", "autoscaling.enabled=true,autoscaling.maxReplicas=9"], "exceeds config.topicPartitions"),
    ],
)
def test_bad_values_are_refused(helm_template: Any, args: list[str], error: str) -> None:
    result = helm_template(*args)
    assert result.returncode != 0 and error in result.stderr, result.stderr


def test_read_api_closed_unless_configured(default: list[Manifest], production: list[Manifest]) -> None:
    """values.yaml promises a closed read API without a token: the engine's default must agree."""
    assert Settings.model_fields["incidents_api_open"].default is False
    env = _env(_engine(default))
    assert "INCIDENTS_API_TOKEN" not in env and "INCIDENTS_API_OPEN" not in env
    env = _env(_engine(production))
    assert env["INCIDENTS_API_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "api-token"
    assert "INCIDENTS_API_OPEN" not in env


def test_prometheus_rule_is_the_plain_rule_file_for_this_release(production: list[Manifest]) -> None:
    """The PrometheusRule carries deploy/prometheus/incident-engine-rules.yaml, rule for rule, scoped to
    the job its ServiceMonitor makes (the Service's name) and labelled for the operator to pick up."""
    rule = _one(production, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = _one(production, "Service")["metadata"]["name"]
    assert rule["metadata"]["name"] == service
    plain = yaml.safe_load((REPO / "deploy" / "prometheus" / "incident-engine-rules.yaml").read_text())
    expected = yaml.safe_load(
        yaml.safe_dump(plain["groups"]).replace('job="incident-sla-engine"', f'job="{service}"')
    )
    assert rule["spec"]["groups"] == expected
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    assert all(f'job="{service}"' in expr for expr in exprs)


def test_prometheus_rule_is_off_by_default_and_takes_the_runbook_address(helm_template: Any) -> None:
    result = helm_template(
        "--set", "prometheusRule.enabled=true",
        "--set", "prometheusRule.runbookBaseUrl=https://git.example.com/team/engine/blob/main/README.md",
        "--show-only", "templates/prometheusrule.yaml",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rule = yaml.safe_load(result.stdout)
    urls = {r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert "https://git.example.com/team/engine/blob/main/README.md#incidentenginedown" in urls
    assert all(url.startswith("https://git.example.com/team/engine/blob/main/README.md#") for url in urls)


def test_notifier_deployment_when_enabled(helm_template: Any, tmp_path: Path) -> None:
    """Off by default; enabled, its Deployment runs `incidents notify` with the routing mounted, its
    own pods (never selected by the engine's Deployment or Service) and probes on its port."""
    values = tmp_path / "notifier.yaml"
    routing = yaml.safe_load((REPO / "deploy/local/notifier.yaml").read_text())
    values.write_text(
        yaml.safe_dump({"notifier": {"enabled": True, "routing": routing, "secretName": "notifier"}})
    )
    result = helm_template("-f", str(values))
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    notifier = [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "notifier"]
    kinds = {d["kind"]: d for d in notifier}
    assert set(kinds) == {"ConfigMap", "Deployment"}
    assert yaml.safe_load(kinds["ConfigMap"]["data"]["notifier.yaml"]) == routing
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["notify"]
    env = _env(container)
    assert env["INCIDENTS_NOTIFIER_CONFIG"]["value"] == "/etc/incidents/notifier/notifier.yaml"
    assert env["INCIDENTS_NOTIFIER_HTTP_PORT"]["value"] == "8082" and "DATABASE_URL" in env
    assert container["envFrom"] == [{"secretRef": {"name": "notifier"}}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    engine = next(d for d in docs if d["kind"] == "Deployment" and d not in notifier)
    engine_selector = engine["spec"]["selector"]["matchLabels"].items()
    assert not engine_selector <= kinds["Deployment"]["spec"]["template"]["metadata"]["labels"].items()
    manifests = tmp_path / "rendered.yaml"
    manifests.write_text(result.stdout)
    validator = Path(sys.executable).parent / "kubernetes-validate"
    checked = subprocess.run(
        [str(validator), "--kubernetes-version", "1.33.0", "--strict", str(manifests)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for bad in (["--set", "notifier.enabled=true"], ["--set", "notifier.retries=3"]):
        refused = helm_template(*bad)
        assert refused.returncode != 0 and (
            "notifier.routing" in refused.stderr or "retries" in refused.stderr
        )

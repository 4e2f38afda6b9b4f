"""The alerting rules pass Prometheus' own rule checks and read only metrics a running engine serves."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest

from devstack.stack import Service, fresh_database
from incident_engine.adapters.telemetry import create_telemetry
from incident_engine.entrypoints.app import EngineService
from incident_engine.entrypoints.commands import publish_events
from incident_engine.entrypoints.http import create_http_app
from tests.integration.engine_helpers import OutputCollector, ago, event, settings_for, start_at_end
from tests.unit.test_alert_rules import RULES, metric_names, rules

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHECK = REPO / "deploy" / "prometheus" / "check.sh"


def _check(*files: Path) -> subprocess.CompletedProcess[str]:
    # the first run builds the checker from the Go module proxy (a few minutes cold on 2 cores)
    return subprocess.run(
        ["bash", str(CHECK), *map(str, files)], cwd=REPO, capture_output=True, text=True, timeout=1200
    )


def test_rules_pass_prometheus_rule_checks(tmp_path: Path) -> None:
    result = _check(RULES)
    assert result.returncode == 0, result.stderr
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout
    # and the checker does refuse a bad duration or expression (it is not a rubber stamp)
    for bad, error in (("for: 2m", "for: 2x"), ('unknown unit "x"')), (("> 1000", "> > 1000"), "parse error"):
        broken = tmp_path / "broken.yaml"
        broken.write_text(RULES.read_text().replace(*bad, 1))
        refused = _check(broken)
        assert refused.returncode == 1 and error in refused.stderr, refused.stderr


def test_each_alert_fires_where_it_should_and_only_there() -> None:
    """deploy/prometheus/rulecheck/alerts_test.go: each alert's expression, as written in the rule file,
    evaluated by Prometheus' engine on series shaped like the engine's metrics."""
    result = _check()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "\nok " in "\n" + result.stdout, result.stdout


async def test_every_metric_of_the_rules_is_on_a_running_engines_metrics(
    kafka: Service, postgres: Service
) -> None:
    used = set().union(*(metric_names(rule["expr"]) for rule in rules()))
    telemetry = create_telemetry("incident-sla-engine-rules", span_exporters=[])
    settings = settings_for(kafka.url, await fresh_database(postgres.url))
    await start_at_end(kafka.url, settings.database_url.get_secret_value(), settings.incidents_consumer_group)
    service = EngineService(settings, telemetry=telemetry)
    p = f"rules-{uuid.uuid4().hex[:6]}-"
    transport = httpx.ASGITransport(app=create_http_app(service))
    async with httpx.AsyncClient(transport=transport, base_url="http://engine") as client:
        await service.start()
        try:
            await asyncio.wait_for(service.loop.ready.wait(), 30)  # type: ignore[union-attr]
            async with OutputCollector(kafka.url, p) as out:
                await publish_events(kafka.url, [
                    event("reported", p + "a", ago(minutes=8), severity="critical", region="au"),
                    event("restored", p + "nobody"),  # a dead letter
                ])  # fmt: skip
                # the ack 50 % warning was overdue when read: a timer fired (its lateness recorded)
                await out.wait_for(lambda: out.of("incident.sla.warning", p + "a") != [], 30)
            missing: set[str] = used
            for _ in range(80):  # lag and backlog are sampled in the background every few seconds
                text = (await client.get("/metrics")).text
                served = {line.split("{")[0].split(" ")[0] for line in text.splitlines()}
                missing = used - served
                if not missing:
                    break
                await asyncio.sleep(0.25)
            assert not missing, f"the rules read metrics the engine does not serve: {sorted(missing)}"
        finally:
            await service.stop()
            telemetry.shutdown()

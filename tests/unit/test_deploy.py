"""The deployment files: alert rules that promtool accepts and whose unit tests pass, a
compose file valid by the Compose Specification, Kubernetes manifests and a dashboard that
name only settings and metrics the program has."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import jsonschema
import pytest
import yaml

from worker import metrics
from worker.settings import PROJECT_ROOT, env_names

DEPLOY = PROJECT_ROOT / "deploy"
COMPOSE = PROJECT_ROOT / "docker-compose.yml"
COMPOSE_SPEC = PROJECT_ROOT / ".cache" / "compose-spec.json"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: `make tools` installs Debian's prometheus package")
    return subprocess.run(["promtool", *args], capture_output=True, text=True, cwd=DEPLOY / "prometheus")


def exported_metrics() -> set[str]:
    names = set()
    for family in metrics.registry.collect():
        names |= {family.name, f"{family.name}_total", f"{family.name}_bucket",
                  f"{family.name}_count", f"{family.name}_sum", f"{family.name}_info"}
    return names


def referenced_metrics(text: str) -> set[str]:
    return set(re.findall(r"\bnotifier_[a-z_]+\b", text))


def test_alert_rules_pass_promtool_check_and_their_unit_tests():
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_runbook_section_and_names_only_real_metrics():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    runbook = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    for rule in rules:
        anchor = rule["annotations"]["runbook_url"].split("#")[1]
        assert f'<a id="{anchor}"></a>' in runbook, anchor
    unknown = referenced_metrics((DEPLOY / "prometheus" / "alerts.yml").read_text()) - exported_metrics()
    assert not unknown


def test_the_dashboard_plots_only_metrics_the_program_exports():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "order-notifier.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    assert len(dashboard["panels"]) >= 10
    assert not referenced_metrics(exprs) - exported_metrics()


def compose_errors(document: dict) -> list[str]:
    schema = json.loads(COMPOSE_SPEC.read_text())
    validator = jsonschema.Draft201909Validator(schema)  # what its $schema names
    return [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(document)]


def test_the_compose_file_is_valid_by_the_compose_specification():
    document = yaml.safe_load(COMPOSE.read_text())
    assert compose_errors(document) == []
    assert {"kafka", "worker", "senders", "sinks", "prometheus", "grafana"} <= set(document["services"])
    # The validator does bite: a port given as a bare string and an unknown key are refused.
    broken = {**document, "services": {**document["services"], "worker": {
        **document["services"]["worker"], "ports": "6066", "restart_policy": "always"}}}
    assert len(compose_errors(broken)) == 2


def test_compose_runs_kafka_in_kraft_mode_with_every_variable_it_needs():
    kafka = yaml.safe_load(COMPOSE.read_text())["services"]["kafka"]
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in ("KAFKA_NODE_ID", "KAFKA_LISTENERS", "KAFKA_ADVERTISED_LISTENERS",
                 "KAFKA_CONTROLLER_LISTENER_NAMES", "KAFKA_CONTROLLER_QUORUM_VOTERS",
                 "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
                 "CLUSTER_ID"):
        assert env.get(name) not in (None, ""), name


def manifests() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kubernetes_manifests_parse_and_have_what_a_cluster_needs():
    docs = manifests()
    kinds = {d["kind"] for d in docs}
    assert {"StatefulSet", "Deployment", "ScaledObject", "PodDisruptionBudget", "ConfigMap",
            "Secret", "Service"} <= kinds
    for doc in docs:
        assert doc["apiVersion"] and doc["metadata"]["name"]
    for workload in (d for d in docs if d["kind"] in ("StatefulSet", "Deployment")):
        [container] = workload["spec"]["template"]["spec"]["containers"]
        assert container["args"][0] in ("worker", "senders", "pages")
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] in ("/readyz", "/healthz")
        assert container["resources"]["requests"]
    worker = next(d for d in docs if d["kind"] == "StatefulSet")
    [container] = worker["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"name": "NOTIFIER_STORE", "value": "rocksdb://"} in container["env"]


def test_deployment_files_set_only_settings_the_program_knows():
    known = set(env_names())
    texts = [COMPOSE.read_text(), *(path.read_text() for path in MANIFESTS)]
    named = {name for text in texts for name in re.findall(r"\bNOTIFIER_[A-Z0-9_]+\b", text)}
    assert len(named) > 20
    assert named <= known, sorted(named - known)

"""The shipped monitoring configuration (deploy/monitoring) holds: Prometheus' config and alert rules pass Debian's
promtool (its checks and the rules' unit tests, every alert both firing and not), and Grafana's dashboards are valid
JSON models whose every query parses as PromQL and names only metrics something in the fleet exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.monitoring_names import KNOWN_METRICS, metric_names

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
DASHBOARD_FILES = sorted((MONITORING / "grafana" / "dashboards").glob("*.json"))
TOKEN_PATH = "/run/prometheus/metrics-token"
# Concrete values for Grafana's variables, so a panel's query is plain PromQL.
VARIABLE_VALUES = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "1h",
    "deployment": "chat",
    "host": "gpu01",
    "gpu": "0",
    "kind": ".*",
    "datasource": "Prometheus",
}
GRAFANA_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def promtool() -> str:
    binary = shutil.which("promtool") or "/usr/bin/promtool"
    assert Path(binary).is_file(), "promtool is needed (Debian's prometheus package: apt-get install prometheus)"
    return binary


def run_promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def alerts() -> dict[str, dict]:
    found = {}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    assert rule["alert"] not in found, f"alert {rule['alert']} is defined twice"
                    found[rule["alert"]] = rule
    return found


def dashboards() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in DASHBOARD_FILES}


def panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def concrete(expr: str, defined: set[str]) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        assert name in defined or name.startswith("__"), f"{expr!r} uses ${name}, which the dashboard does not define"
        assert name in VARIABLE_VALUES, f"no test value for ${name}"
        return VARIABLE_VALUES[name]

    return GRAFANA_VARIABLE.sub(value, expr)


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable's metric selector, variables replaced."""
    queries = []
    for name, dashboard in dashboards().items():
        variables = dashboard["templating"]["list"]
        defined = {variable["name"] for variable in variables}
        for variable in variables:
            if variable["type"] != "query":
                continue
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            selector = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert selector, f"{name}: variable {variable['name']} is not a label_values() query: {query}"
            queries.append((f"{name} variable {variable['name']}", concrete(selector.group(1), defined)))
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                where = f"{name} panel {panel['title']!r} {target['refId']}"
                queries.append((where, concrete(target["expr"], defined)))
    return queries


# --- Prometheus ---------------------------------------------------------------------------------------------------


def test_promtool_checks_the_shipped_config(tmp_path):
    """The config as the image installs it: rules in /etc/prometheus/rules, the token file the entrypoint writes
    (both moved into a temporary directory, since promtool checks that they exist)."""
    (tmp_path / "rules").mkdir()
    for path in RULE_FILES:
        shutil.copy(path, tmp_path / "rules" / path.name)
    token = tmp_path / "metrics-token"
    token.write_text("s3cret")
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    assert text.count(TOKEN_PATH) == 6, "three discovery requests, three scrape jobs"
    assert "/etc/prometheus/rules/*.yml" in text
    config = tmp_path / "prometheus.yml"
    config.write_text(text.replace(TOKEN_PATH, str(token)).replace("/etc/prometheus/rules/", f"{tmp_path}/rules/"))
    result = run_promtool("check", "config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout
    total = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", result.stdout))
    assert total == len(alerts())


def test_scrape_jobs_use_the_consoles_discovery():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name, kind in (
        ("llmdeploy-console", "console"),
        ("llmdeploy-agents", "agents"),
        ("llmdeploy-deployments", "deployments"),
    ):
        (discovery,) = jobs[name]["http_sd_configs"]
        assert discovery["url"].endswith(f"/metrics/targets?kind={kind}"), name
        # Prometheus 2.42's http_sd sends the bare token unless the type is named (tests/deploy/test_prometheus_live).
        assert discovery["authorization"] == {"type": "Bearer", "credentials_file": TOKEN_PATH}, name
    # The console checks the bearer on its /metrics and on the deployments it proxies, the agents' exporters too.
    for name in ("llmdeploy-console", "llmdeploy-agents", "llmdeploy-deployments"):
        assert jobs[name]["authorization"] == {"credentials_file": TOKEN_PATH}, name
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_promtool_checks_the_rules():
    result = run_promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_runs_the_rules_unit_tests():
    result = run_promtool("test", "rules", *(path.name for path in TEST_FILES), cwd=PROMETHEUS_DIR / "tests")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(TEST_FILES)


def test_every_alert_is_tested_firing_and_not_firing():
    fires, quiet = set(), set()
    tested_files = set()
    for path in TEST_FILES:
        document = yaml.safe_load(path.read_text())
        tested_files |= {(path.parent / rule_file).resolve() for rule_file in document["rule_files"]}
        for test in document["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert tested_files == {path.resolve() for path in RULE_FILES}
    names = set(alerts())
    assert names - fires == set(), "alerts with no test that fires them"
    assert names - quiet == set(), "alerts with no test where they stay quiet"
    assert fires | quiet <= names, "tests of alerts that do not exist"
    # A deployment that stops unexpectedly pages, both from the console's view and from its own scrape.
    assert {"LlmdeployDeploymentStoppedUnexpectedly", "LlmdeployDeploymentNotAnswering"} <= fires


def test_alerts_say_how_bad_and_what_to_do():
    for name, rule in alerts().items():
        assert name.startswith("Llmdeploy"), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert annotations["summary"].strip(), name
        assert "docs/troubleshooting.md" in annotations["description"], name
        assert re.fullmatch(r"docs/troubleshooting\.md#[a-z0-9-]+", annotations["runbook"]), name


def test_the_alerts_cover_the_fleet():
    """The conditions the issue asks to alert on, by the metric each watches."""
    watched = {name: metric_names(rule["expr"]) for name, rule in alerts().items()}
    everything = set().union(*watched.values())
    for metric in (
        "llmdeploy_deployment_up",
        "llmdeploy_deployment_restarts_total",
        "llmdeploy_gpu_temperature_celsius",
        "llmdeploy_gpu_ecc_errors_total",
        "llmdeploy_gpu_xid_errors_total",
        "llmdeploy_gpu_memory_used_bytes",
        "llmdeploy_job_queue_depth",
        "llmdeploy_download_failures_total",
        "llmdeploy_model_store_free_bytes",
        "llmdeploy_audit_verification_ok",
        "llmdeploy_audit_checkpoint_age_seconds",
        "llmdeploy_integrity_corrupt_artifacts",
        "llmdeploy_host_heartbeat_age_seconds",
        "llmdeploy_gpu_health",
    ):
        assert metric in everything, f"no alert watches {metric}"


# --- Grafana ------------------------------------------------------------------------------------------------------


def test_provisioning_files():
    datasources = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    providers = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False


def test_dashboards_are_grafana_json_models():
    boards = dashboards()
    assert set(boards) == {"fleet-overview.json", "deployment-serving.json", "host-gpus.json", "jobs.json"}
    uids = [board["uid"] for board in boards.values()]
    assert len(set(uids)) == len(uids)
    for name, board in boards.items():
        assert board["schemaVersion"] >= 36, name
        assert board["title"].startswith("llmdeploy"), name
        assert "llmdeploy" in board["tags"], name
        variables = {variable["name"]: variable for variable in board["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        ids = [panel["id"] for panel in panels(board)]
        assert len(set(ids)) == len(ids), f"{name}: panel ids repeat"
        for panel in panels(board):
            position = panel["gridPos"]
            assert position["x"] >= 0 and position["x"] + position["w"] <= 24, f"{name}: {panel['title']}"
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], f"{name}: {panel['title']} has no query"
    assert boards["deployment-serving.json"]["templating"]["list"][1]["name"] == "deployment"
    assert [v["name"] for v in boards["host-gpus.json"]["templating"]["list"]][1:] == ["host", "gpu"]


def test_deployment_dashboard_shows_gateway_and_server_series():
    board = dashboards()["deployment-serving.json"]
    exprs = " ".join(target["expr"] for panel in panels(board) for target in panel.get("targets", []))
    names = metric_names(exprs)
    assert {
        "llmdeploy_gateway_tokens_total",
        "llmdeploy_gateway_request_duration_seconds_bucket",
        "llmdeploy_gateway_errors_total",
    } <= names
    assert any(name.startswith("tgi_") for name in names) and any(name.startswith("vllm:") for name in names)
    assert "tgi_queue_size" in names and "vllm:num_requests_waiting" in names


def test_every_dashboard_query_parses_as_promql(tmp_path):
    """promtool parses each query, Grafana's variables replaced by concrete values, as a recording rule."""
    queries = dashboard_queries()
    assert len(queries) > 60
    rules = [
        {"record": f"dashboard_query:n{index}", "expr": expr, "labels": {"where": where[:200]}}
        for index, (where, expr) in enumerate(queries)
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    result = run_promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_metric_name_extraction():
    assert metric_names('sum by (le) (rate(a_bucket{x="y", z=~"$w"}[5m])) / on (h) b offset 1h > 0.9') == {
        "a_bucket",
        "b",
    }
    assert metric_names('histogram_quantile(0.95, x{a="b"}) or vector(0) and time() - vllm:c_total > 1e9') == {
        "x",
        "vllm:c_total",
    }


@pytest.mark.parametrize("source", ["dashboards", "rules"])
def test_every_metric_used_is_exported(source):
    """Names from the contract's console and agent metrics, serve.py's TGI names and vLLM's (workers/jobs)."""
    exprs = [(name, rule["expr"]) for name, rule in alerts().items()] if source == "rules" else dashboard_queries()
    used = set()
    for where, expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown = names - KNOWN_METRICS
        assert not unknown, f"{where}: {sorted(unknown)} is exported by nothing in the fleet"
        used |= names
    assert len(used) > (30 if source == "dashboards" else 15)

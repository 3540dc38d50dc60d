"""Issue 19, Show point 1: a real Prometheus (Debian's /usr/bin/prometheus) with the shipped scrape jobs and alert
rules finds everything through the console's discovery and scrapes it: the console's own /metrics (under daphne, as
the `web` service runs it), a GPU host's agent exporter (the H200 stand-in for NVML) and a serve.py deployment whose
TGI metrics the console passes through, all with the metrics bearer token. A deployment that starts during the test
is queryable within a scrape interval of Prometheus discovering it; one whose server dies shows up as down and its
alert goes pending; and every metric the dashboards read that this fleet exports returns data from the dashboards'
own queries."""

from __future__ import annotations

import os
import time

import pytest
import requests
from django.conf import settings
from django.utils import timezone

from audit.tasks import checkpoint as audit_checkpoint
from deployments.gateway import keys
from deployments.models import Deployment
from deployments.monitoring.flags import raise_flag
from tests.conftest import _test_database_url, need
from tests.deploy.monitoring_names import metric_names
from tests.deploy.prometheus_live import ConsoleProcess, PrometheusProcess, wait_until
from tests.deploy.test_monitoring_config import dashboard_queries
from tests.factories import (
    DeploymentFactory,
    DeploymentSpecFactory,
    GpuFactory,
    HostFactory,
    JobFactory,
    ModelRepoFactory,
)
from tests.support import fake_nvml
from tests.support.deploy_fixtures import tiny_model_in_store
from tests.support.gateway_process import GatewayProcess
from tests.support.serve_process import ServeProcess, ml_python

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "prometheus-and-the-console-share-this"
SERVER_KEY = "only-the-console-sends-this"
INTERVAL = 1.0  # seconds: the scrape interval and the discovery refresh this test gives Prometheus
HOST = "gpu-live"
DISCOVERY_BATCH = 5.0  # seconds: Prometheus' discovery manager passes target changes on at most this often

# Series the dashboards read that this fleet does not produce, and why. Everything else must return data.
NOT_PRODUCED_HERE = {
    "ALERTS": "no alert fires before the dashboards are read",
    "llmdeploy_gateway_errors_total": "no call through the gateway fails on the server side",
    "llmdeploy_job_duration_seconds_bucket": "no job ends during the test",
    "llmdeploy_job_duration_seconds_count": "no job ends during the test",
    "llmdeploy_launches_total": "no launch job runs (the deployments are made running directly)",
    "llmdeploy_launch_failures_total": "no launch job runs",
    "llmdeploy_gpu_xid_errors_total": "the stand-in GPU reports no XID",
    "llmdeploy_healthcheck_findings": "no health check has run",
    "llmdeploy_healthcheck_last_run_timestamp_seconds": "no health check has run",
    "llmdeploy_gpu_retired_pages": "the H200 remaps rows instead: NVML answers NotSupported",
    "llmdeploy_gpu_retired_pages_pending": "the H200 remaps rows instead: NVML answers NotSupported",
}
NOT_PRODUCED_PREFIX = "vllm:"  # no vLLM server runs here: serve.py speaks TGI's names
# Queries that are filters: they return series only when something is wrong (a throttled GPU).
FILTERS = {"llmdeploy_gpu_throttle_reasons"}


@pytest.fixture(scope="module")
def model_dir():
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run serve.py")
    return tiny_model_in_store()


@pytest.fixture
def served(model_dir):
    process = ServeProcess(model_dir, env={"API_KEY": SERVER_KEY}).start()
    try:
        yield process.wait_ready()
    finally:
        process.stop()


@pytest.fixture
def process_env(tmp_path, redis_url, django_db_blocker) -> dict:
    """The environment of the console's processes: the test database, and one prometheus_client multiprocess
    directory, as web and the gateway share DATA_DIR in production."""
    with django_db_blocker.unblock():
        database = _test_database_url()
    multiproc = tmp_path / "multiproc"
    multiproc.mkdir()
    env = dict(
        os.environ,
        DATABASE_URL=database,
        REDIS_URL=redis_url,
        DATA_DIR=str(settings.DATA_DIR),
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
        METRICS_BEARER_TOKEN=TOKEN,
        ALLOWED_HOSTS="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    env.pop("METRICS_PUBLIC_ADDRESS", None)  # discovery names the address Prometheus asked it at
    return env


@pytest.fixture
def console(tmp_path, process_env):
    process = ConsoleProcess(tmp_path).start(process_env)
    yield process
    process.stop()


@pytest.fixture
def gateway(process_env):
    """The inference gateway in its own process (as the `gateway` service), counting calls into the shared
    multiprocess directory the console's /metrics sums."""
    process = GatewayProcess(dict(process_env, GATEWAY_CACHE_SECONDS="0", GATEWAY_FLUSH_SECONDS="0.2")).start()
    yield process
    process.stop()


@pytest.fixture
def exporter(tmp_path):
    """The agent's exporter on the H200 stand-in (helper code the agent runs), asking for the same token."""
    from workers.gpu_exporter import start_exporter

    store = tmp_path / "models"
    store.mkdir()
    started = start_exporter(HOST, "127.0.0.1", 0, nvml=fake_nvml, token=TOKEN, model_store=store, version="test")
    assert started, "the exporter did not start"
    server, address = started
    yield address
    server.shutdown()
    server.server_close()


@pytest.fixture
def prometheus(tmp_path, console):
    work = tmp_path / "prometheus"
    work.mkdir()
    process = PrometheusProcess(work, console.url, TOKEN, interval=f"{INTERVAL:g}s").start()
    yield process
    process.stop()


def running_deployment(name: str, host, server: ServeProcess, gpus: list[int]) -> Deployment:
    deployment = DeploymentFactory(
        name=name, state=Deployment.State.STOPPED, host=host, gpu_indexes=gpus, endpoint="", server_key=SERVER_KEY
    )
    DeploymentSpecFactory(
        deployment=deployment, current=True, backend="tgi", artifact__repo=ModelRepoFactory(repo_id=f"tests/{name}")
    )
    return deployment


def start_serving(deployment: Deployment, server: ServeProcess) -> None:
    """What a finished launch writes: the deployment runs at its server's endpoint."""
    Deployment.objects.filter(pk=deployment.pk).update(state=Deployment.State.RUNNING, endpoint=server.url)


def one(prometheus: PrometheusProcess, expr: str, timeout: float = 15) -> dict:
    """The single series `expr` selects, waited for."""
    result = wait_until(lambda: prometheus.query(expr), timeout, f"Prometheus has {expr}")
    assert len(result) == 1, result
    return result[0]


def labels_of(series: dict) -> dict:
    return {key: value for key, value in series["metric"].items() if key != "__name__"}


def test_prometheus_scrapes_the_fleet_through_discovery(
    model_dir, served, console, gateway, exporter, prometheus, admin
):
    host = HostFactory(name=HOST, metrics_address=exporter, last_heartbeat=timezone.now())
    GpuFactory(host=host, name="NVIDIA H200", memory_total=150_754_820_096)
    JobFactory()  # a download waiting: llmdeploy_jobs has a series
    chat = running_deployment("chat", host, served, [0])
    start_serving(chat, served)
    raise_flag(chat, cause="gpu-failed", subject="gpu:0", detail="GPU 0 failed.", next_step="Move the deployment.")
    # Beat's audit checkpoint: verifies the chain (kept for /metrics), then signs the head.
    assert audit_checkpoint() is not None

    # Every target is discovered and scraped, with the token (a 401 would leave it down).
    for job in ("llmdeploy-console", "llmdeploy-agents", "llmdeploy-deployments"):

        def scraped(job=job):
            found = prometheus.active_targets(job)
            return found if len(found) == 1 and found[0]["health"] == "up" else None

        try:
            wait_until(scraped, 20, f"{job} discovered and up")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {prometheus.active_targets(job)}\n{prometheus.log}\n{console.log}") from None

    # The console's own series.
    up = one(prometheus, 'llmdeploy_deployment_up{deployment="chat"}')
    assert up["value"][1] == "1"
    assert {key: up["metric"][key] for key in ("job", "deployment", "backend", "host")} == {
        "job": "llmdeploy-console",
        "deployment": "chat",
        "backend": "tgi",
        "host": HOST,
    }
    assert one(prometheus, 'llmdeploy_deployment_flags{deployment="chat",cause="gpu-failed"}')["value"][1] == "1"
    assert one(prometheus, 'llmdeploy_jobs{kind="download",status="pending"}')["value"][1] == "1"
    assert one(prometheus, f'llmdeploy_host_up{{host="{HOST}"}}')["value"][1] == "1"
    assert float(one(prometheus, f'llmdeploy_host_heartbeat_age_seconds{{host="{HOST}"}}')["value"][1]) < 60
    health = one(prometheus, f'llmdeploy_gpu_health{{host="{HOST}",gpu="0"}} == 1')
    assert health["metric"]["state"] == "healthy"

    # The agent exporter's, labelled as the contract says, with NVML's reading.
    from workers.nvml import read_telemetry

    (reading,) = read_telemetry(fake_nvml)
    memory = one(prometheus, 'llmdeploy_gpu_memory_total_bytes{job="llmdeploy-agents"}')
    assert {k: memory["metric"][k] for k in ("host", "gpu", "uuid", "name")} == {
        "host": HOST,
        "gpu": "0",
        "uuid": reading.uuid,
        "name": "NVIDIA H200",
    }
    assert float(memory["value"][1]) == reading.memory_total
    temperature = one(prometheus, f'llmdeploy_gpu_temperature_celsius{{host="{HOST}",gpu="0"}}')
    assert float(temperature["value"][1]) == reading.temperature

    # The deployment's own TGI series, through the console, with discovery's labels.
    queue = one(prometheus, 'tgi_queue_size{job="llmdeploy-deployments"}')
    assert labels_of(queue) == {
        "job": "llmdeploy-deployments",
        "instance": console.url.removeprefix("http://"),
        "deployment": "chat",
        "replica": "0",
        "backend": "tgi",
        "model": "tests/chat",
        "host": HOST,
        "gpus": "0",
    }
    # A request to the server shows in the next scrapes.
    generated = requests.post(
        f"{served.url}/generate",
        json={"inputs": "hello", "parameters": {"max_new_tokens": 5}},
        headers={"Authorization": f"Bearer {SERVER_KEY}"},
        timeout=60,
    )
    assert generated.status_code == 200, generated.text
    success = one(prometheus, 'tgi_request_success{deployment="chat"} >= 1')
    assert success["value"][1] == "1"
    refused = requests.post(  # more new tokens than the server allows: a validation failure, as TGI counts it
        f"{served.url}/generate",
        json={"inputs": "hello", "parameters": {"max_new_tokens": 10**6}},
        headers={"Authorization": f"Bearer {SERVER_KEY}"},
        timeout=60,
    )
    assert refused.status_code == 422, refused.text
    failure = one(prometheus, 'tgi_request_failure{deployment="chat"}')
    assert failure["metric"]["err"] == "validation" and failure["value"][1] == "1"

    # A call through the gateway (its own process) is counted on the console's /metrics.
    _key, raw = keys.key_create(actor=admin, name="app", user=admin, deployments=[chat])
    called = requests.post(
        f"{gateway.url}/llm/chat/generate",
        json={"inputs": "hello", "parameters": {"max_new_tokens": 4, "details": True}},
        headers={"Authorization": f"Bearer {raw}"},
        timeout=60,
    )
    assert called.status_code == 200, called.text
    calls = one(prometheus, 'llmdeploy_gateway_requests_total{deployment="chat"}')
    assert calls["metric"]["code"] == "200" and calls["value"][1] == "1"
    completion = one(prometheus, 'llmdeploy_gateway_tokens_total{deployment="chat",kind="completion"}')
    assert float(completion["value"][1]) == called.json()["details"]["generated_tokens"], called.json()
    assert one(prometheus, 'llmdeploy_gateway_request_duration_seconds_count{deployment="chat"}')["value"][1] == "1"

    # A deployment launched now: in the console's discovery at once; in Prometheus' targets after its next refresh
    # and the discovery manager's batching (Prometheus hands new targets to the scrapers every 5 s); queryable
    # within one scrape interval of that.
    late_server = ServeProcess(model_dir, env={"API_KEY": SERVER_KEY}).start().wait_ready()
    try:
        late = running_deployment("late", host, late_server, [0])
        started = time.monotonic()
        start_serving(late, late_server)
        listed = requests.get(
            f"{console.url}/metrics/targets?kind=deployments", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        ).json()
        assert {group["labels"]["deployment"] for group in listed} == {"chat", "late"}
        wait_until(
            lambda: any(
                t["labels"].get("deployment") == "late" for t in prometheus.active_targets("llmdeploy-deployments")
            ),
            15,
            "the late deployment in Prometheus' targets",
            interval=0.02,
        )
        discovered, discovered_at = time.monotonic(), time.time()
        (first,) = wait_until(
            lambda: prometheus.query('timestamp(tgi_queue_size{deployment="late"})'), 10, "late's series", interval=0.02
        )
        queryable = time.monotonic()
        scraped_after = float(first["value"][1]) - discovered_at  # Prometheus' own stamp of its first scrape
        took = f"a target after {discovered - started:.2f} s, scraped {scraped_after:.2f} s later"
        print(f"\nlate deployment: {took}, queried {queryable - discovered:.2f} s after it was a target")
        assert discovered - started <= INTERVAL + DISCOVERY_BATCH + 1.5
        assert scraped_after <= INTERVAL, "the first scrape comes within one interval"
        assert queryable - discovered <= INTERVAL + 0.5

        # Its server dies while the console still counts it running: the target is down, the alert pending.
        late_server.stop()
        down = one(prometheus, 'up{job="llmdeploy-deployments",deployment="late"} == 0', timeout=10)
        assert down["metric"]["host"] == HOST
        alert = one(prometheus, 'ALERTS{alertname="LlmdeployDeploymentNotAnswering"}', timeout=10)
        assert alert["metric"]["deployment"] == "late" and alert["metric"]["alertstate"] == "pending"
        assert alert["metric"]["severity"] == "critical"
    finally:
        late_server.stop()

    # The dashboards' own queries return data for everything this fleet exports.
    produced_names = set()
    for where, expr in dashboard_queries():
        expr = expr.replace('"gpu01"', f'"{HOST}"')
        names = metric_names(expr)
        if names & set(NOT_PRODUCED_HERE) or names & FILTERS or any(n.startswith(NOT_PRODUCED_PREFIX) for n in names):
            continue
        produced_names |= names
        result = wait_until(lambda expr=expr: prometheus.query(expr), 10, f"{where}: {expr}")
        assert result, where
    exported = set(prometheus.api("label/__name__/values"))
    missing = produced_names - exported
    assert not missing, f"the dashboards read {sorted(missing)}, which this fleet should export"
    wrongly_listed = set(NOT_PRODUCED_HERE) & exported - {"ALERTS"}
    assert not wrongly_listed, f"listed as not produced here, but Prometheus has {sorted(wrongly_listed)}"
    assert {"tgi_queue_size", "llmdeploy_gpu_utilization_percent", "llmdeploy_deployment_up"} <= produced_names

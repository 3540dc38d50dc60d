"""The console's /metrics: what Prometheus reads of the fleet (hosts, GPUs, deployments, jobs and their queues, the
audit chain, the health check) with the names and labels the dashboards and alert rules use, and the bearer token
that guards it."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from django.conf import settings
from django.test import Client
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

import audit
from audit.models import AuditCheckpoint
from audit.tasks import checkpoint
from deployments.models import Deployment, GpuReservation, Host, Job, ModelArtifact
from deployments.monitoring import metrics
from deployments.monitoring.models import HealthCheckRun
from tests.audit.tampering import Tamper
from tests.factories import (
    DeploymentFactory,
    DeploymentSpecFactory,
    GpuFactory,
    HostFactory,
    JobFactory,
    ModelArtifactFactory,
)

pytestmark = pytest.mark.django_db


def scrape(client: Client | None = None, **headers) -> dict[tuple, float]:
    """GET /metrics, parsed by prometheus_client's own parser: {(sample name, ((label, value), ...)): value}."""
    response = (client or Client(HTTP_HOST="127.0.0.1")).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def fleet(db):
    """Two hosts (one online, one offline), GPUs in three health states with a reservation, three deployments
    (running, failed with a flag, stopped), serve jobs (one failed), download jobs, a corrupt artifact."""
    now = timezone.now()
    online = HostFactory(name="node-a", last_heartbeat=now - timedelta(seconds=12))
    HostFactory(name="node-b", status=Host.Status.OFFLINE, last_heartbeat=now - timedelta(hours=1))
    gpu0 = GpuFactory(host=online, memory_total=80 * 10**9)
    GpuFactory(host=online, health="degraded")
    GpuFactory(host=online, health="failed")
    GpuReservation.objects.create(gpu=gpu0, memory_bytes=30 * 10**9, holder="deployment:1")
    GpuReservation.objects.create(gpu=gpu0, memory_bytes=10 * 10**9, holder="deployment:2")
    running = DeploymentFactory(name="chat", state=Deployment.State.RUNNING, host=online, restart_count=2)
    spec = DeploymentSpecFactory(deployment=running, current=True, backend="tgi")
    failed = DeploymentFactory(
        name="broken",
        state=Deployment.State.FAILED,
        flags=[{"cause": "gpu_failed", "subject": "gpu:2"}, {"cause": "gpu_failed", "subject": "gpu:1"}],
    )
    failed_spec = DeploymentSpecFactory(deployment=failed, current=True, backend="vllm")
    DeploymentFactory(name="idle")
    JobFactory(kind=Job.Kind.SERVE, status=Job.Status.RUNNING, params={"spec": spec.pk})
    JobFactory(kind=Job.Kind.SERVE, status=Job.Status.SUCCEEDED, params={"spec": spec.pk})
    JobFactory(kind=Job.Kind.SERVE, status=Job.Status.FAILED, failure_cause="cuda_oom", params={"spec": failed_spec.pk})
    JobFactory(kind=Job.Kind.DOWNLOAD, status=Job.Status.FAILED)
    JobFactory(kind=Job.Kind.DOWNLOAD, status=Job.Status.FAILED)
    JobFactory(kind=Job.Kind.DOWNLOAD, status=Job.Status.SUCCEEDED)
    ModelArtifactFactory(host=online, status=ModelArtifact.Status.CORRUPT)
    return online


def test_the_fleet_as_the_database_holds_it(fleet):
    samples = scrape()
    assert value(samples, "llmdeploy_host_up", host="node-a") == 1
    assert value(samples, "llmdeploy_host_up", host="node-b") == 0
    assert 12 <= value(samples, "llmdeploy_host_heartbeat_age_seconds", host="node-a") < 60
    assert value(samples, "llmdeploy_host_heartbeat_age_seconds", host="node-b") >= 3600
    # One series per GPU and state, 1 for the state it is in.
    assert value(samples, "llmdeploy_gpu_health", host="node-a", gpu="0", state="healthy") == 1
    assert value(samples, "llmdeploy_gpu_health", host="node-a", gpu="0", state="failed") == 0
    assert value(samples, "llmdeploy_gpu_health", host="node-a", gpu="1", state="degraded") == 1
    assert value(samples, "llmdeploy_gpu_health", host="node-a", gpu="2", state="failed") == 1
    assert sum(v for (name, labels), v in samples.items() if name == "llmdeploy_gpu_health") == 3
    assert value(samples, "llmdeploy_inventory_gpu_memory_bytes", host="node-a", gpu="0") == 80e9
    assert value(samples, "llmdeploy_inventory_gpu_reserved_bytes", host="node-a", gpu="0") == 40e9
    assert value(samples, "llmdeploy_inventory_gpu_reserved_bytes", host="node-a", gpu="1") == 0

    assert value(samples, "llmdeploy_deployment_up", deployment="chat", backend="tgi", host="node-a") == 1
    assert value(samples, "llmdeploy_deployment_up", deployment="broken", backend="vllm", host="") == 0
    assert value(samples, "llmdeploy_deployment_up", deployment="idle", backend="", host="") == 0
    assert value(samples, "llmdeploy_deployments", state="running", backend="tgi") == 1
    assert value(samples, "llmdeploy_deployments", state="failed", backend="vllm") == 1
    assert value(samples, "llmdeploy_deployment_restarts_total", deployment="chat") == 2
    assert value(samples, "llmdeploy_deployment_flags", deployment="broken", cause="gpu_failed") == 2
    assert value(samples, "llmdeploy_deployment_flags", deployment="chat", cause="gpu_failed") is None

    assert value(samples, "llmdeploy_launches_total", backend="tgi") == 2
    assert value(samples, "llmdeploy_launches_total", backend="vllm") == 1
    assert value(samples, "llmdeploy_launch_failures_total", backend="vllm", cause="cuda_oom") == 1
    assert value(samples, "llmdeploy_jobs", kind="download", status="failed") == 2
    assert value(samples, "llmdeploy_jobs", kind="serve", status="running") == 1
    assert value(samples, "llmdeploy_download_failures_total") == 2
    assert value(samples, "llmdeploy_integrity_corrupt_artifacts") == 1


def test_queue_depth_is_each_celery_queue_length(fleet, redis_url):
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete("host.node-a", "host.node-b")
    try:
        client.lpush("host.node-a", "task-1", "task-2", "task-3")
        samples = scrape()
        assert value(samples, "llmdeploy_job_queue_depth", queue="host.node-a") == 3
        assert value(samples, "llmdeploy_job_queue_depth", queue="host.node-b") == 0
        assert value(samples, "llmdeploy_job_queue_depth", queue="celery") is not None
    finally:
        client.delete("host.node-a")


def test_the_health_check_figures_come_from_the_last_finished_run(db):
    assert value(scrape(), "llmdeploy_healthcheck_last_run_timestamp_seconds") is None  # none has run
    finished = timezone.now() - timedelta(days=2)
    HealthCheckRun.objects.create(
        state=HealthCheckRun.State.DONE,
        finished_at=finished,
        findings=[{"severity": "critical"}, {"severity": "warning"}, {"severity": "warning"}],
    )
    HealthCheckRun.objects.create(state=HealthCheckRun.State.RUNNING, findings=[{"severity": "critical"}] * 5)
    samples = scrape()
    assert value(samples, "llmdeploy_healthcheck_findings", severity="critical") == 1
    assert value(samples, "llmdeploy_healthcheck_findings", severity="warning") == 2
    assert value(samples, "llmdeploy_healthcheck_findings", severity="info") == 0
    assert value(samples, "llmdeploy_healthcheck_last_run_timestamp_seconds") == pytest.approx(finished.timestamp())


@pytest.mark.django_db(transaction=True)
def test_the_audit_figures_follow_the_chain_and_its_last_verification(admin):
    for n in range(3):
        audit.record(action="test.metrics", actor=admin, target=admin, detail={"n": n})
    checkpoint()  # beat's task: verifies the events since the last checkpoint, then signs the head
    samples = scrape()
    events = value(samples, "llmdeploy_audit_events_total")
    assert events >= 3
    assert 0 <= value(samples, "llmdeploy_audit_checkpoint_age_seconds") < 60
    assert value(samples, "llmdeploy_audit_verification_ok") == 1

    audit.record(action="test.metrics", actor=admin, target=admin, detail={"n": 3})
    with Tamper() as tamper:  # someone edits an event after the checkpoint
        tamper.sql("UPDATE audit_auditevent SET action = 'test.edited' WHERE id = %s", [int(events) + 1])
    checkpoints = AuditCheckpoint.objects.count()
    assert checkpoint() is None  # not signed: a checkpoint would vouch for the edited event
    samples = scrape()
    assert value(samples, "llmdeploy_audit_verification_ok") == 0
    assert value(samples, "llmdeploy_audit_events_total") == events + 1
    # Later runs verify from the same (last good) checkpoint: the failure stays until the chain is restored.
    audit.record(action="test.metrics", actor=admin, target=admin, detail={"n": 4})
    assert checkpoint() is None
    assert AuditCheckpoint.objects.count() == checkpoints
    assert value(scrape(), "llmdeploy_audit_verification_ok") == 0


def test_label_values_are_escaped_as_the_format_requires(db):
    """A free-text cause with a quote, a backslash and a newline reads back exactly."""
    spec = DeploymentSpecFactory(current=True, backend="tgi")
    odd = 'exit "137"\\killed\nby the kernel'
    JobFactory(kind=Job.Kind.SERVE, status=Job.Status.FAILED, failure_cause=odd, params={"spec": spec.pk})
    assert value(scrape(), "llmdeploy_launch_failures_total", backend="tgi", cause=odd) == 1


def test_the_same_series_as_prometheus_client_writes(fleet):
    """The console's own text writer and prometheus_client's generate_latest say the same of the same families."""
    from prometheus_client import generate_latest

    from bench.bench_metrics import baseline_registry, series

    families = metrics.database_families()
    ours = series(metrics.render(families))
    assert ours == series(generate_latest(baseline_registry(families)).decode())
    assert len(ours) > 40


def test_the_bearer_token_guards_every_metrics_endpoint(fleet, settings):
    settings.METRICS_BEARER_TOKEN = "prometheus-reads-this"
    client = Client(HTTP_HOST="127.0.0.1")
    for path in ("/metrics", "/metrics/targets?kind=agents", "/metrics/deployments/1"):
        for headers in ({}, {"HTTP_AUTHORIZATION": "Bearer wrong"}, {"HTTP_AUTHORIZATION": "prometheus-reads-this"}):
            response = client.get(path, **headers)
            assert response.status_code == 401, (path, headers)
            assert response["WWW-Authenticate"].startswith("Bearer")
    assert value(scrape(client, HTTP_AUTHORIZATION="Bearer prometheus-reads-this"), "llmdeploy_host_up", host="node-a")
    response = client.get("/metrics/targets?kind=agents", HTTP_AUTHORIZATION="Bearer prometheus-reads-this")
    assert response.status_code == 200
    # No login needed, and a logged-in person without the token is refused like anyone.
    assert client.get("/metrics").status_code == 401


def test_a_scrape_still_answers_when_redis_does_not(fleet, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there: the queue lengths are unknown
    samples = scrape()
    assert not [key for key in samples if key[0] == "llmdeploy_job_queue_depth"]
    assert value(samples, "llmdeploy_host_up", host="node-a") == 1

"""The counters other processes write reach the console's /metrics: prometheus_client's multiprocess files in
PROMETHEUS_MULTIPROC_DIR, summed over every process, live or gone. Real processes: plain Python processes counting
through deployments/monitoring/instruments.py, and the gateway (uvicorn, its own process) answering a call."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests
from celery.signals import worker_process_shutdown
from django.conf import settings

from deployments.gateway import keys, records
from deployments.jobs.services import job_create
from deployments.models import AllowedEndpoint, Deployment, Host, Job, ModelSource
from deployments.registry.services import model_add
from tests.conftest import ROOT, _start_worker, _test_database_url, _wait_and_stop
from tests.deployments.monitoring.test_metrics_endpoint import scrape, value
from tests.factories import DeploymentFactory, DeploymentSpecFactory
from tests.support.gateway_process import GatewayProcess
from workers import runner

COUNTING = """
import os, sys, django
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
django.setup()
from deployments.monitoring import instruments
name = sys.argv[1]
instruments.gateway_call({"deployment_name": name, "status": 200, "prompt_tokens": 5, "completion_tokens": 7,
                          "duration_ms": 300})
instruments.gateway_call({"deployment_name": name, "status": 502, "duration_ms": 40})
instruments.job_finished("download", "succeeded", 42.0)
instruments.downloaded(1000)
"""


def _count_in_another_process(name: str) -> None:
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=settings.PROMETHEUS_MULTIPROC_DIR)
    done = subprocess.run([sys.executable, "-c", COUNTING, name], cwd=ROOT, env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()


@pytest.mark.django_db
def test_counts_of_two_finished_processes_are_summed(settings, tmp_path):
    # A directory of its own: a worker an earlier test started may still finish a download job into the shared one.
    settings.PROMETHEUS_MULTIPROC_DIR = str(tmp_path)
    name = f"mp-{uuid.uuid4().hex[:8]}"
    before = scrape()
    jobs_before = value(before, "llmdeploy_job_duration_seconds_count", kind="download", status="succeeded") or 0
    bytes_before = value(before, "llmdeploy_download_bytes_total") or 0
    _count_in_another_process(name)
    _count_in_another_process(name)
    after = scrape()
    assert value(after, "llmdeploy_gateway_requests_total", deployment=name, code="200") == 2
    assert value(after, "llmdeploy_gateway_requests_total", deployment=name, code="502") == 2
    assert value(after, "llmdeploy_gateway_errors_total", deployment=name) == 2
    assert value(after, "llmdeploy_gateway_tokens_total", deployment=name, kind="prompt") == 10
    assert value(after, "llmdeploy_gateway_tokens_total", deployment=name, kind="completion") == 14
    assert value(after, "llmdeploy_gateway_request_duration_seconds_count", deployment=name) == 4
    assert value(after, "llmdeploy_gateway_request_duration_seconds_bucket", deployment=name, le="0.05") == 2
    assert value(after, "llmdeploy_gateway_request_duration_seconds_bucket", deployment=name, le="0.5") == 4
    assert value(after, "llmdeploy_gateway_request_duration_seconds_sum", deployment=name) == pytest.approx(0.68)
    jobs_after = value(after, "llmdeploy_job_duration_seconds_count", kind="download", status="succeeded")
    assert jobs_after == jobs_before + 2
    assert value(after, "llmdeploy_download_bytes_total") == bytes_before + 2000


@pytest.mark.django_db(transaction=True)
def test_a_job_a_celery_worker_ran_is_timed_and_stays_counted_after_the_worker_stops(redis_url):
    """A real prefork worker (the runner in its child process) observes the job's duration when it ends."""
    queue = f"test-metrics-{time.monotonic_ns()}"
    process, log = _start_worker(
        {"REDIS_URL": redis_url, "DATABASE_URL": _test_database_url()},
        "metrics-worker",
        queue,
        pool="prefork",
        include="tests.support.job_handlers",
    )
    labels = {"kind": "test.count", "status": "succeeded"}
    earlier = scrape()
    before = value(earlier, "llmdeploy_job_duration_seconds_count", **labels) or 0
    seconds_before = value(earlier, "llmdeploy_job_duration_seconds_sum", **labels) or 0
    stopping = _wait_and_stop(process, log, queue)
    next(stopping)  # it answers
    job = job_create(kind="test.count", actor=None, queue=queue, params={"lines": 2, "delay": 0.3})
    deadline = time.monotonic() + 60
    while not Job.objects.filter(pk=job.pk, status=Job.Status.SUCCEEDED).exists():
        assert time.monotonic() < deadline, Path(log.name).read_text()[-3000:]
        time.sleep(0.1)
    samples = scrape()
    assert value(samples, "llmdeploy_job_duration_seconds_count", **labels) == before + 1
    assert value(samples, "llmdeploy_job_duration_seconds_bucket", **labels, le="60.0") >= before + 1
    assert value(samples, "llmdeploy_job_duration_seconds_sum", **labels) - seconds_before >= 0.6  # 2 lines, 0.3 s each
    next(stopping, None)  # the worker stops (its processes end)
    assert process.poll() is not None
    assert value(scrape(), "llmdeploy_job_duration_seconds_count", **labels) == before + 1


def test_a_celery_worker_process_that_ends_is_marked_dead(tmp_path, settings):
    """Its live gauges go (prometheus_client's bookkeeping for a dead process); its counters stay summed."""
    settings.PROMETHEUS_MULTIPROC_DIR = str(tmp_path)
    # Files are named host-pid (instruments.process_identifier): compose's containers share the directory.
    who = f"{socket.gethostname().replace('_', '-')}-424242"
    live, counter = tmp_path / f"gauge_livesum_{who}.db", tmp_path / f"counter_{who}.db"
    live.write_bytes(b""), counter.write_bytes(b"")
    worker_process_shutdown.send(sender=None, pid=424242, exitcode=0)
    assert not live.exists()
    assert counter.exists()


@pytest.fixture
def gateway(redis_url, transactional_db):
    env = dict(
        os.environ,
        DATABASE_URL=_test_database_url(),
        REDIS_URL=redis_url,
        DATA_DIR=str(settings.DATA_DIR),
        PROMETHEUS_MULTIPROC_DIR=settings.PROMETHEUS_MULTIPROC_DIR,
        GATEWAY_CACHE_SECONDS="0",
        GATEWAY_FLUSH_SECONDS="0.2",
    )
    client = records._redis()
    client.delete(records.STREAM)  # records of an earlier run name rows of a database that is gone
    process = GatewayProcess(env).start()
    yield process
    deadline = time.monotonic() + 30  # its inference records sealed before the test database is emptied
    while (client.xlen(records.STREAM) or client.exists(records.LOCK)) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.stop()


def test_the_gateway_processes_calls_are_counted(gateway, admin):
    name = f"gw-{uuid.uuid4().hex[:8]}"
    deployment = DeploymentFactory(name=name, state=Deployment.State.STOPPED)
    DeploymentSpecFactory(deployment=deployment, current=True)
    _, raw = keys.key_create(actor=admin, name="metrics", user=admin, deployments=[deployment])
    body = {"model": name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    answers = [
        requests.post(
            f"{gateway.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {raw}"}, timeout=30
        ).status_code
        for _ in range(3)
    ]
    assert answers == [503] * 3  # the deployment is stopped: refused, and still one record each
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        samples = scrape()
        if value(samples, "llmdeploy_gateway_requests_total", deployment=name, code="503") == 3:
            break
        time.sleep(0.1)
    assert value(samples, "llmdeploy_gateway_requests_total", deployment=name, code="503") == 3
    assert value(samples, "llmdeploy_gateway_errors_total", deployment=name) == 3
    assert value(samples, "llmdeploy_gateway_request_duration_seconds_count", deployment=name) == 3
    own = f"*_{socket.gethostname().replace('_', '-')}-{gateway.pid}.db"
    assert any(Path(settings.PROMETHEUS_MULTIPROC_DIR).glob(own))  # written by the gateway itself


@pytest.mark.django_db
def test_downloaded_bytes_are_counted(hub_server, engineer, admin, tmp_path, settings):
    """A download job run by the runner adds exactly the bytes of the files it fetched."""
    settings.MODEL_STORE = tmp_path / "store"
    files = {"config.json": b'{"model_type": "llama"}', "model.safetensors": b"\0" * (3 * 2**20 + 17)}
    hub_server.add_repo("acme/counted", files)
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")
    mirror = ModelSource.objects.create(name="m", kind="mirror", endpoint=hub_server.endpoint, created_by=admin)
    host = Host.objects.create(name="dl-node", status="online")
    before = value(scrape(), "llmdeploy_download_bytes_total") or 0
    artifact = model_add(actor=engineer, source=mirror, repo_id="acme/counted", host=host)
    job = Job.objects.get(target_type="deployments.modelartifact", target_id=str(artifact.pk))
    assert runner.run(job.pk) == "succeeded"
    assert value(scrape(), "llmdeploy_download_bytes_total") == before + sum(map(len, files.values()))

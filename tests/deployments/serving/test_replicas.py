"""Issue 15 item 6 (replicas) with real parts: a two-replica deployment on the process runtime runs two serve.py
servers, each placed on a GPU of its own with its own job, endpoint and key; the gateway's upstreams() lists both.
One replica's server is killed (kill -9): its job fails it, it leaves the routes at once while the other keeps
serving, the reconciler restarts it after the backoff and it is routed again; stop ends both."""

from __future__ import annotations

import os
import signal
import time

import pytest
import redis
import requests
from django.conf import settings as django_settings
from django.utils import timezone

from audit.models import AuditEvent
from deployments.gateway.cache import ROUTES_GENERATION
from deployments.gateway.routing import upstreams
from deployments.models import Deployment, DeploymentReplica, GpuReservation, Job
from deployments.serving import replicas
from deployments.serving import services as lifecycle
from deployments.serving.replica_models import LABEL_REPLICA
from tests.conftest import need
from tests.support.deploy_fixtures import (
    process_host,
    ready_artifact,
    run_job_in_thread,
    tiny_model_in_store,
    wait_state,
)
from tests.support.serve_process import ml_python
from workers import reconcile
from workers.runtimes.base import LABEL_DEPLOYMENT
from workers.runtimes.process import ProcessRuntime

pytestmark = pytest.mark.django_db(transaction=True)
State = Deployment.State
SPEC = {"device": "gpu", "max_input_tokens": 200, "max_total_tokens": 256, "max_concurrent_requests": 8, "replicas": 2}


@pytest.fixture
def two_gpus(settings):
    need(ml_python() is not None, "the ML environment (make ml-env) runs serve.py")
    settings.DEPLOY_HEALTH_SECONDS = 0.5
    settings.JOB_CANCEL_POLL_SECONDS = 0.2
    settings.DEPLOY_STOP_GRACE_SECONDS = 20
    settings.DEPLOY_RESTART_BACKOFF_SECONDS = 1
    host = process_host(gpus=2)
    return host, ready_artifact(host, tiny_model_in_store())


def answers(url: str, key: str) -> bool:
    """The server behind `url` generates for its own key (and only for it)."""
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 2}}
    refused = requests.post(f"{url}/generate", json=body, timeout=30)
    answered = requests.post(f"{url}/generate", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    return refused.status_code == 401 and answered.status_code == 200


def routes_generation() -> int:
    return int(redis.Redis.from_url(django_settings.REDIS_URL).get(ROUTES_GENERATION) or 0)


def wait_for(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_two_replicas_run_placed_apart_and_a_killed_one_is_unrouted_then_restarted(admin, two_gpus):
    host, artifact = two_gpus
    deployment = lifecycle.deployment_create(actor=admin, name="pair", spec={"artifact": artifact.pk, **SPEC})
    [replica] = deployment.replicas.all()
    try:
        _run_pair(admin, host, deployment, replica)
    finally:  # never leave a server behind for the next test to adopt
        runtime = ProcessRuntime()
        for handle in runtime.find({LABEL_DEPLOYMENT: str(deployment.pk)}) + runtime.find(
            {LABEL_REPLICA: str(replica.pk)}
        ):
            runtime.remove(handle)


def _run_pair(admin, host, deployment, replica) -> None:
    # Placed by the one engine, each on a GPU of its own, each reserved under its own holder, each with its own job.
    assert deployment.host == host and deployment.gpu_indexes == [0]
    assert replica.index == 1 and replica.host == host and replica.gpu_indexes == [1]
    assert replica.state == State.STARTING and replica.job_id not in (None, deployment.job_id)
    reserved = {r.holder: r.gpu.index for r in GpuReservation.objects.select_related("gpu")}
    assert reserved == {deployment.holder: 0, replica.holder: 1}
    assert replica.job.params["replica"] == replica.pk and replica.job.queue == "host.local"
    watchers = [run_job_in_thread(deployment.job_id), run_job_in_thread(replica.job_id)]

    deployment = wait_state(deployment, {State.RUNNING, State.FAILED})
    replica = wait_state(replica, {State.RUNNING, State.FAILED})
    assert deployment.state == replica.state == State.RUNNING, (deployment.failure_detail, replica.failure_detail)
    assert replica.endpoint != deployment.endpoint and replica.server_key.reveal() != deployment.server_key.reveal()
    assert (
        replica.command[replica.command.index("--shard-uds-path") + 1]
        != deployment.command[deployment.command.index("--shard-uds-path") + 1]
    )  # two servers on one host: a socket prefix each
    servers = upstreams(deployment)
    assert [s.url for s in servers] == [deployment.endpoint, replica.endpoint]
    assert [s.label for s in servers] == ["local:GPU 0", "local:GPU 1#1"]
    assert all(answers(s.url, s.key) for s in servers)
    assert replicas.summary(deployment).text == "2/2 replicas running"

    # kill -9 the replica's whole process group: its watching job sees the server gone and fails the replica.
    [handle] = ProcessRuntime().find({LABEL_REPLICA: str(replica.pk)})
    before = routes_generation()
    os.killpg(int(handle.ref), signal.SIGKILL)
    watchers[1].join(60)
    replica = wait_state(replica, {State.FAILED})
    assert replica.next_restart_at is not None and replica.endpoint == ""
    assert not GpuReservation.objects.filter(holder=replica.holder).exists()
    assert routes_generation() > before  # the gateways were told to re-read routes
    assert [s.url for s in upstreams(deployment)] == [deployment.endpoint]  # out of routing at once
    assert answers(deployment.endpoint, deployment.server_key.reveal())  # the other keeps serving
    deployment.refresh_from_db()
    assert deployment.state == State.RUNNING and replicas.summary(deployment).text == "1/2 replicas running"
    failed = AuditEvent.objects.get(action="deployment.replica_failed", target_id=str(deployment.pk))
    assert failed.details["replica"] == 1 and failed.outcome == "failure"

    # The reconciler restarts it once the backoff (DEPLOY_RESTART_BACKOFF_SECONDS) has passed, on its GPU again.
    assert reconcile.reconcile_console()["restarted"] == []  # not yet due
    time.sleep(max(0.0, (replica.next_restart_at - timezone.now()).total_seconds()) + 0.1)
    assert reconcile.reconcile_console()["restarted"] == [f"{deployment.pk}/r1"]
    replica.refresh_from_db()
    assert replica.restart_count == 1 and replica.gpu_indexes == [1] and replica.job.params["replica"] == replica.pk
    restarted = AuditEvent.objects.get(action="deployment.replica_auto_restart", target_id=str(deployment.pk))
    assert restarted.details == {"replica": 1, "attempt": 1, "after": failed.details["cause"]}
    watchers[1] = run_job_in_thread(replica.job_id)
    replica = wait_state(replica, {State.RUNNING, State.FAILED})
    assert replica.state == State.RUNNING, replica.failure_detail
    servers = upstreams(deployment)
    assert [s.url for s in servers] == [deployment.endpoint, replica.endpoint] and answers(
        servers[1].url, servers[1].key
    )
    replica.refresh_from_db()
    assert replica.restart_count == 0  # a server that came up resets the backoff

    # Stop stops every replica and frees every GPU.
    lifecycle.deployment_stop(actor=admin, deployment=deployment)
    for watcher in watchers:
        watcher.join(60)
        assert not watcher.is_alive()
    wait_state(deployment, {State.STOPPED})
    wait_state(replica, {State.STOPPED})
    assert not GpuReservation.objects.exists() and upstreams(deployment) == []
    assert ProcessRuntime().find({LABEL_REPLICA: str(replica.pk)}) == []
    assert Job.objects.get(pk=replica.job_id).status == Job.Status.CANCELLED
    assert DeploymentReplica.objects.get(pk=replica.pk).state == State.STOPPED

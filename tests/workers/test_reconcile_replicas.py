"""The reconciler and a deployment's replicas (issue 15 item 6): a replica whose server vanished while no job
watched it is failed and taken out of routing at once, then restarted after the backoff while server 0 keeps
serving; a replica server still running without a job is adopted; a replica server no replica wants is removed,
and a replica server is never taken for a stale copy of its deployment's own server."""

from __future__ import annotations

import pytest
import redis
from django.conf import settings as django_settings
from django.utils import timezone

from audit.models import AuditEvent
from deployments.gateway.cache import ROUTES_GENERATION
from deployments.gateway.routing import upstreams
from deployments.models import Deployment, DeploymentReplica, Job
from deployments.serving import replicas
from deployments.serving import services as lifecycle
from deployments.serving.replica_models import LABEL_REPLICA
from tests.support.deploy_fixtures import process_host, ready_artifact
from tests.support.model_dirs import write_llama_dir
from workers import reconcile
from workers.runtimes.base import LABEL_MANAGED, Handle, RunSpec
from workers.runtimes.process import ProcessRuntime

pytestmark = pytest.mark.django_db(transaction=True)
State = Deployment.State


@pytest.fixture
def serving_pair(admin, tmp_path, settings):
    """A two-replica CPU deployment whose servers both report running (no real server: the jobs are gone)."""
    settings.DEPLOY_RESTART_BACKOFF_SECONDS = 0
    host = process_host()
    artifact = ready_artifact(host, write_llama_dir(tmp_path / "tiny", "tiny"))
    deployment = lifecycle.deployment_create(
        actor=admin, name="pair", spec={"artifact": artifact.pk, "device": "cpu", "replicas": 2}
    )
    [replica] = deployment.replicas.all()
    Job.objects.filter(pk__in=[deployment.job_id, replica.job_id]).update(status=Job.Status.FAILED)
    Deployment.objects.filter(pk=deployment.pk).update(
        state=State.RUNNING, endpoint="http://127.0.0.1:7", server_key="k0"
    )
    DeploymentReplica.objects.filter(pk=replica.pk).update(
        state=State.RUNNING, endpoint="http://127.0.0.1:8", server_key="k1"
    )
    deployment.refresh_from_db()
    replica.refresh_from_db()
    return host, deployment, replica


def sleeper(name: str, labels: dict) -> Handle:
    """A stand-in server process carrying the given runtime labels."""
    runtime = ProcessRuntime()
    return runtime.start(
        RunSpec(name=name, labels=labels, args=["60"], program=["sleep"], env={}, model_dir="", model_store="")
    )


def routes_generation() -> int:
    return int(redis.Redis.from_url(django_settings.REDIS_URL).get(ROUTES_GENERATION) or 0)


def test_a_vanished_replica_is_failed_unrouted_and_restarted_while_server_0_serves(serving_pair):
    host, deployment, replica = serving_pair
    handle = sleeper("server-0", deployment.labels)  # server 0 still runs: adopted, never confused with replica 1
    try:
        assert [s.url for s in upstreams(deployment)] == ["http://127.0.0.1:7", "http://127.0.0.1:8"]
        before = routes_generation()
        result = reconcile.reconcile_host(host.name)
        assert result == {"adopted": [deployment.pk], "failed": [f"{deployment.pk}/r1"], "removed": []}
    finally:
        ProcessRuntime().remove(handle)
    replica.refresh_from_db()
    assert replica.state == State.FAILED and replica.failure_cause == "vanished" and replica.next_restart_at
    assert routes_generation() > before
    deployment.refresh_from_db()
    assert [s.url for s in upstreams(deployment)] == ["http://127.0.0.1:7"]
    assert AuditEvent.objects.get(action="deployment.replica_failed").details["cause"] == "vanished"

    result = reconcile.reconcile_console()
    assert result["restarted"] == [f"{deployment.pk}/r1"]
    replica.refresh_from_db()
    assert replica.state == State.STARTING and replica.restart_count == 1
    assert replica.job.params == {
        "deployment": deployment.pk,
        "replica": replica.pk,
        "index": 1,
        "spec": deployment.spec_id,
        "artifact": deployment.spec.artifact_id,
    }
    assert AuditEvent.objects.filter(action="deployment.replica_auto_restart").count() == 1


def test_a_running_replica_without_a_job_is_adopted_and_an_unwanted_one_removed(serving_pair):
    host, deployment, replica = serving_pair
    Deployment.objects.filter(pk=deployment.pk).update(state=State.STOPPED)  # server 0 is not in this test
    mine = sleeper(replica.instance, replica.labels)
    stray = sleeper("stray", {LABEL_MANAGED: "true", LABEL_REPLICA: "424242"})
    try:
        result = reconcile.reconcile_host(host.name)
        assert result == {"adopted": [f"{deployment.pk}/r1"], "failed": [], "removed": ["stray"]}
        assert not ProcessRuntime().status(stray).alive and ProcessRuntime().status(mine).alive
    finally:
        ProcessRuntime().remove(mine)
        ProcessRuntime().remove(stray)
    replica.refresh_from_db()
    assert replica.state == State.RUNNING
    assert replica.job.params["adopt"] is True and replica.job.params["replica"] == replica.pk
    assert AuditEvent.objects.filter(action="deployment.replica_adopted").count() == 1
    assert AuditEvent.objects.filter(action="deployment.orphan_removed", target_name="stray").count() == 1


def test_a_failed_replica_waits_for_its_backoff(serving_pair, settings):
    _host, deployment, replica = serving_pair
    settings.DEPLOY_RESTART_BACKOFF_SECONDS = 60
    replicas.replica_failed(replica, cause="crashed", detail="", next_step="")
    replica.refresh_from_db()
    assert 59 <= (replica.next_restart_at - timezone.now()).total_seconds() <= 60
    assert reconcile.reconcile_console()["restarted"] == []
    DeploymentReplica.objects.filter(pk=replica.pk).update(next_restart_at=timezone.now())
    assert reconcile.reconcile_console()["restarted"] == [f"{deployment.pk}/r1"]

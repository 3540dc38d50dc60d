"""Issue 15 item 6 (replicas), without servers: the planner places each of N replicas on GPUs of its own and
refuses a spec whose N do not fit (service, form and API alike); launch places and reserves every replica; the
page and the API say how many run; stop and restart take every replica along; a deployment whose own server
failed still serves through its replicas and cannot be deleted under them."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from console.errors import ApplicationError
from deployments.gateway.routing import upstreams
from deployments.models import Deployment, DeploymentReplica, DeploymentSpec, Gpu, GpuReservation, Job
from deployments.serving import replicas
from deployments.serving import services as lifecycle
from deployments.serving.planning import verdict
from deployments.serving.specs import clean_spec
from tests.factories import GpuFactory, HostFactory
from tests.support.deploy_fixtures import ready_artifact
from tests.support.model_dirs import write_llama_dir

pytestmark = pytest.mark.django_db
State = Deployment.State
SPEC = {"device": "gpu", "max_input_tokens": 128, "max_total_tokens": 256}


@pytest.fixture
def two_gpus(tmp_path):
    """One host, two 16 GB GPUs, a tiny Llama (config and safetensors header only) on it."""
    host = HostFactory(name="pair-node")
    GpuFactory(host=host, index=0, memory_total=16 * 10**9)
    GpuFactory(host=host, index=1, memory_total=16 * 10**9)
    return host, ready_artifact(host, write_llama_dir(tmp_path / "tiny", "tiny"))


def test_the_planner_places_each_replica_on_gpus_of_its_own_and_refuses_what_does_not_fit(admin, two_gpus):
    _host, artifact = two_gpus
    two = verdict(clean_spec({"artifact": artifact.pk, **SPEC, "replicas": 2}))
    assert two.fits is True and two.gpu_indexes == [0]
    assert two.replicas == [{"host": "pair-node", "gpu_indexes": [0]}, {"host": "pair-node", "gpu_indexes": [1]}]

    three = verdict(clean_spec({"artifact": artifact.pk, **SPEC, "replicas": 3}))
    assert three.fits is False and "Replica 3 of 3 does not fit beside the others" in three.reason
    with pytest.raises(ApplicationError) as refused:
        lifecycle.deployment_create(actor=admin, name="three", spec={"artifact": artifact.pk, **SPEC, "replicas": 3})
    assert refused.value.field == "artifact" and "Replica 3 of 3" in refused.value.message
    assert not Deployment.objects.exists() and not GpuReservation.objects.exists() and not Job.objects.exists()

    by_hand = verdict(clean_spec({"artifact": artifact.pk, **SPEC, "replicas": 2, "gpu_indexes": [0]}))
    assert by_hand.fits is False and "GPUs chosen by hand serve one replica" in by_hand.reason
    on_cpu = verdict(clean_spec({"artifact": artifact.pk, **SPEC, "device": "cpu", "replicas": 8}))
    assert on_cpu.fits is True  # CPU replicas run beside the model
    with pytest.raises(ApplicationError) as bad:
        clean_spec({"artifact": artifact.pk, **SPEC, "replicas": 9})
    assert bad.value.field == "replicas"


def test_the_form_and_the_api_refuse_replicas_that_do_not_fit(client, admin, api, two_gpus):
    _host, artifact = two_gpus
    plan = api(admin).post(
        "/api/v1/deployments/plan/", {"spec": {"artifact": artifact.pk, **SPEC, "replicas": 3}}, expected=200
    )
    assert plan.data["verdict"]["fits"] is False and "Replica 3 of 3" in plan.data["verdict"]["reason"]
    api(admin).post(
        "/api/v1/deployments/",
        {"name": "nine", "spec_input": {"artifact": artifact.pk, **SPEC, "replicas": 9}},
        expected=400,
    )
    client.force_login(admin)
    form = {
        "artifact": artifact.pk,
        "name": "three",
        "restart_policy": "on-failure",
        "environment": "development",
        "prompt_retention": "none",
        "max_concurrent_requests": 128,
        "cuda_memory_fraction": 1.0,
        "replicas": 3,
        **SPEC,
    }
    response = client.post("/deployments/new/", {**form, "confirm": "1"})
    assert response.status_code == 400
    assert "Replica 3 of 3 does not fit beside the others" in response.content.decode()
    assert not Deployment.objects.exists()
    created = client.post("/deployments/new/", {**form, "replicas": 2, "confirm": "1"})
    assert created.status_code == 302
    assert Deployment.objects.get(name="three").spec.replicas == 2


def test_launch_places_and_reserves_every_replica_and_stop_takes_them_along(admin, two_gpus):
    host, artifact = two_gpus
    deployment = lifecycle.deployment_create(
        actor=admin, name="pair", spec={"artifact": artifact.pk, **SPEC, "replicas": 2}
    )
    [replica] = deployment.replicas.all()
    assert (deployment.gpu_indexes, replica.gpu_indexes) == ([0], [1]) and replica.host == host
    reserved = {r.holder: r.gpu.index for r in GpuReservation.objects.select_related("gpu")}
    assert reserved == {f"deployment:{deployment.pk}": 0, f"deployment:{deployment.pk}:replica:1": 1}
    assert replica.job.kind == Job.Kind.SERVE and replica.job.params["replica"] == replica.pk
    launched = AuditEvent.objects.get(action="deployment.replica_launched", target_id=str(deployment.pk))
    assert launched.details["replica"] == 1 and launched.details["gpus"] == [1]
    assert replicas.summary(deployment).text == "0/2 replicas running"

    lifecycle.deployment_stop(actor=admin, deployment=deployment)
    replica.refresh_from_db()
    deployment.refresh_from_db()
    assert deployment.state == replica.state == State.STOPPING
    assert Job.objects.get(pk=replica.job_id).cancel_requested
    assert AuditEvent.objects.filter(action="deployment.replica_stop_requested").count() == 1
    assert replicas.replica_stopped(replica) is False  # what the replica's job reports once its server stopped
    lifecycle.deployment_stopped(deployment)
    assert not GpuReservation.objects.exists()


def test_restart_relaunches_every_replica_once_it_has_stopped(admin, two_gpus):
    _host, artifact = two_gpus
    deployment = lifecycle.deployment_create(
        actor=admin, name="again", spec={"artifact": artifact.pk, **SPEC, "replicas": 2}
    )
    [replica] = deployment.replicas.all()
    first_job = replica.job_id
    lifecycle.deployment_restart(actor=admin, deployment=deployment)
    replica.refresh_from_db()
    assert replica.state == State.STOPPING and Job.objects.get(pk=first_job).cancel_requested
    assert lifecycle.deployment_stopped(deployment) is True  # server 0 launches again, and asks its replicas to
    replica.refresh_from_db()
    assert replica.restart_requested
    assert replicas.replica_stopped(replica) is True
    replica.refresh_from_db()
    assert replica.state == State.STARTING and replica.job_id != first_job and replica.gpu_indexes == [1]


def test_a_deployment_whose_own_server_failed_serves_through_its_replicas(admin, api, client, two_gpus):
    _host, artifact = two_gpus
    deployment = lifecycle.deployment_create(
        actor=admin, name="half", spec={"artifact": artifact.pk, **SPEC, "replicas": 2}, restart_policy="never"
    )
    [replica] = deployment.replicas.all()
    replicas.replica_running(replica, endpoint="http://127.0.0.1:9/", info={}, server="serve.py")
    DeploymentReplica.objects.filter(pk=replica.pk).update(server_key="k1")
    Job.objects.filter(pk=deployment.job_id).update(status=Job.Status.FAILED)  # server 0's job saw it die
    lifecycle.deployment_failed(deployment, cause="crashed", detail="gone", next_step="")
    deployment.refresh_from_db()

    [server] = upstreams(deployment)  # server 0 is out; its replica still answers
    assert (server.url, server.key, server.label) == ("http://127.0.0.1:9", "k1", "pair-node:GPU 1#1")
    data = api(admin).get(f"/api/v1/deployments/{deployment.pk}/").data
    assert data["state"] == "failed" and data["replicas"]["text"] == "1/2 replicas running"
    assert data["replicas"]["serving"] is True and [s["state"] for s in data["replicas"]["servers"]] == [
        "failed",
        "running",
    ]
    assert data["actions"] == ["launch", "stop"]  # nothing is deleted under a running replica
    with pytest.raises(ApplicationError, match="cannot be deleted"):
        lifecycle.deployment_delete(actor=admin, deployment=deployment)
    client.force_login(admin)
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert 'id="replicas-summary"' in page and "1/2 replicas running" in page
    assert 'data-replica="1" data-replica-state="running"' in page
    assert f'href="/jobs/{replica.job_id}/" data-replica-job="1"' in page  # each replica's log, one click away

    lifecycle.deployment_stop(actor=admin, deployment=deployment)
    replica.refresh_from_db()
    deployment.refresh_from_db()
    assert deployment.state == State.STOPPED and replica.state == State.STOPPING
    assert DeploymentSpec.objects.filter(deployment=deployment).exists()


def test_an_edit_counts_every_replica_s_own_reservation_as_free(admin, two_gpus):
    """GPUs that hold one server each but not two: the edit of the running pair still fits (after a restart they
    are the pair's again), while a second pair does not."""
    _host, artifact = two_gpus
    spec = {"artifact": artifact.pk, **SPEC, "replicas": 2}
    deployment = lifecycle.deployment_create(actor=admin, name="tight", spec=spec)
    per_gpu = GpuReservation.objects.filter(holder=deployment.holder).get().memory_bytes
    Gpu.objects.update(memory_total=int(per_gpu * 1.6))
    assert verdict(clean_spec(spec)).fits is False  # a second pair
    edited = lifecycle.spec_update(actor=admin, deployment=deployment, spec={"max_total_tokens": 200})
    assert edited.version == 2 and edited.diff == {"max_total_tokens": [256, 200]}

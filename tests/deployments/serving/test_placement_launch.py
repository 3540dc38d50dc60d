"""Launches are placed by the one placement engine, on any host: the model is on host A, placement picks host B's
NVLink pair, the registry fetches the files to B, the server starts there and the reservation is on B's GPUs.
A directory import with no verified files to copy stays on the host that holds it, and the refusal says why (one
that has them is copied: tests/deployments/registry/test_model_copy.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from audit.models import AuditEvent
from console.errors import ApplicationError
from deployments.models import AllowedEndpoint, Deployment, Gpu, GpuReservation, Job, ModelArtifact, ModelSource
from deployments.registry.services import model_add
from deployments.serving import services as lifecycle
from deployments.serving.planning import verdict
from deployments.serving.specs import clean_spec
from tests.conftest import need
from tests.support.deploy_fixtures import process_host, run_job_in_thread, tiny_model_in_store, wait_state
from tests.support.serve_process import ml_python
from workers import runner
from workers.runtimes.base import LABEL_DEPLOYMENT
from workers.runtimes.process import ProcessRuntime

pytestmark = pytest.mark.django_db(transaction=True)
SPEC = {"device": "gpu", "num_shard": 2, "max_input_tokens": 200, "max_total_tokens": 256}
REPO = "tests/tiny-placed"


def _two_hosts():
    """host-a: one GPU. host-b: four GPUs, 1 and 2 joined by NVLink (best fit alone would take 0 and 1)."""
    a = process_host("host-a", gpus=1)
    b = process_host("host-b", gpus=4)
    Gpu.objects.filter(host=b, index__in=[1, 2]).update(nvlink_group="nvlink-0")
    return a, b


@pytest.fixture
def mirror(hub_server, admin):
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")
    model = tiny_model_in_store()
    # The model's own files (an earlier import may have left the console's manifest.json beside them).
    files = {p.name: p.read_bytes() for p in sorted(Path(model).iterdir()) if p.is_file() and p.name != "manifest.json"}
    hub_server.add_repo(REPO, files)
    return ModelSource.objects.create(name="test mirror", kind="mirror", endpoint=hub_server.endpoint, created_by=admin)


def wait_for(read, needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while needle not in (text := read()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return text


def _download(artifact: ModelArtifact, store: Path, settings) -> ModelArtifact:
    """Run the artifact's download job as that host's agent would (each agent has its own model store)."""
    settings.MODEL_STORE = store
    job = Job.objects.filter(kind=Job.Kind.DOWNLOAD, target_id=str(artifact.pk)).latest("id")
    outcome = runner.run(job.pk)
    job.refresh_from_db()
    assert outcome == "succeeded", f"{job.failure_cause}: {job.failure_detail}"
    artifact.refresh_from_db()
    return artifact


def test_placement_picks_b_nvlink_pair_fetches_the_model_there_and_starts(admin, mirror, settings, tmp_path):
    need(ml_python() is not None, "the ML environment (make ml-env) runs serve.py")
    settings.DEPLOY_HEALTH_SECONDS = 0.5
    settings.JOB_CANCEL_POLL_SECONDS = 0.2
    settings.DEPLOY_STOP_GRACE_SECONDS = 20
    store_a, store_b = tmp_path / "store-a", tmp_path / "store-b"
    a, b = _two_hosts()
    on_a = _download(model_add(actor=admin, source=mirror, repo_id=REPO, host=a), store_a, settings)
    assert on_a.status == ModelArtifact.Status.READY and Path(on_a.path).is_relative_to(store_a)

    plan = verdict(clean_spec({"artifact": on_a.pk, **SPEC}))
    assert plan.fits and plan.host == "host-b" and plan.gpu_indexes == [1, 2] and plan.copy_to_host

    deployment = lifecycle.deployment_create(actor=admin, name="placed", spec={"artifact": on_a.pk, **SPEC})
    assert deployment.state == Deployment.State.DOWNLOADING
    assert deployment.host == b and deployment.gpu_indexes == [1, 2]
    assert deployment.job.queue == "host.host-b"
    reserved = GpuReservation.objects.filter(holder=deployment.holder)
    assert sorted((r.gpu.host.name, r.gpu.index) for r in reserved) == [("host-b", 1), ("host-b", 2)]
    on_b = ModelArtifact.objects.get(repo=on_a.repo, host=b)
    assert on_b.status == ModelArtifact.Status.PENDING
    copy = Job.objects.get(kind=Job.Kind.DOWNLOAD, target_id=str(on_b.pk))
    assert copy.queue == "host.host-b"
    assert AuditEvent.objects.filter(action="model.download_requested", target_id=str(on_b.pk)).exists()

    watcher = run_job_in_thread(deployment.job_id)  # the serve job waits for the files on B
    try:
        _runs_on_b(admin, deployment, on_b, store_b, settings, watcher)
    finally:  # never leave a server behind for the next test to adopt
        for handle in ProcessRuntime().find({LABEL_DEPLOYMENT: str(deployment.pk)}):
            ProcessRuntime().remove(handle)


def _runs_on_b(admin, deployment, on_b, store_b, settings, watcher) -> None:
    on_b = _download(on_b, store_b, settings)
    assert on_b.status == ModelArtifact.Status.READY and Path(on_b.path).is_relative_to(store_b)
    deployment = wait_state(deployment, {Deployment.State.RUNNING, Deployment.State.FAILED})
    assert deployment.state == Deployment.State.RUNNING, deployment.failure_detail
    command = deployment.command
    assert command[command.index("--num-shard") + 1] == "2"
    assert command[command.index("--model-id") + 1] == on_b.path  # B's copy, not A's
    assert "model files copied to host-b" in deployment.placement_note
    server_said = wait_for(lambda: "\n".join(deployment.job.lines.values_list("text", flat=True)), "does not shard")
    assert "serve.py does not shard: --num-shard 2" in server_said  # it says plainly that it runs one copy

    lifecycle.deployment_stop(actor=admin, deployment=deployment)
    watcher.join(60)
    assert not watcher.is_alive()
    wait_state(deployment, {Deployment.State.STOPPED})
    assert not GpuReservation.objects.filter(holder=deployment.holder).exists()


def test_the_host_holding_the_files_is_preferred_when_it_fits(admin, mirror, settings, tmp_path):
    a, _b = _two_hosts()
    Gpu.objects.create(host=a, index=1, name="Test GPU", memory_total=16 * 10**9, health=Gpu.Health.OK)
    on_a = _download(model_add(actor=admin, source=mirror, repo_id=REPO, host=a), tmp_path / "a", settings)
    plan = verdict(clean_spec({"artifact": on_a.pk, **SPEC}))
    assert plan.fits and plan.host == "host-a" and plan.gpu_indexes == [0, 1] and not plan.copy_to_host


def test_a_directory_import_places_only_where_it_is_and_the_refusal_says_why(admin, settings):
    a, _b = _two_hosts()
    imported = ModelArtifact.objects.create(
        repo=ModelSource.objects.create(name="local", kind=ModelSource.Kind.LOCAL).repos.create(
            repo_id="tests/imported", commit="0" * 40
        ),
        host=a,
        path=str(tiny_model_in_store()),
        status=ModelArtifact.Status.READY,
        imported=True,
    )
    plan = verdict(clean_spec({"artifact": imported.pk, **SPEC}))
    assert plan.fits is False
    assert "host-b does not hold this model and cannot get it yet" in plan.reason
    assert "runs only on host-a" in plan.reason
    with pytest.raises(ApplicationError) as refused:
        lifecycle.deployment_create(actor=admin, name="stuck", spec={"artifact": imported.pk, **SPEC})
    assert refused.value.field == "artifact" and "cannot get it yet" in refused.value.message
    assert not Deployment.objects.exists()

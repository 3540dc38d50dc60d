"""A vLLM deployment on a docker host end to end, against a real dockerd (issue 16's show): the image an admin
allowed for the vLLM backend, pinned by its digest, is `llmdeploy-vllm-test` (tests/support/ml_image.py, built
here, nothing pulled), whose entrypoint is `vllm serve` as in vLLM's OpenAI server image; there the `vllm` shim runs
the stand-in (workers/jobs/vllm_serve.py). The serve job starts it with the vLLM backend's arguments and the key in
VLLM_API_KEY from a mounted file, it reaches running, answers the playground and the `openai` client through the
gateway, and stops cleanly: vLLM's shutdown lines, exit 0, the container gone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.test import override_settings

from deployments.models import Deployment, Host, Job, JobLogLine
from deployments.serving import services as lifecycle
from deployments.serving.images import image_allow
from tests.deployments.gateway.conftest import _gateway_drained
from tests.support.deploy_fixtures import ready_artifact, run_job_in_thread, wait_state
from tests.support.ml_image import docker_client, host_mounts, tiny_model_store, vllm_image
from tests.support.vllm_deploy import REPO, openai_answers, playground_answers
from workers.runtimes.base import LABEL_DEPLOYMENT
from workers.runtimes.docker import DockerRuntime

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]
__all__ = ["_gateway_drained"]  # the gateway seals its records before the database is flushed
BASE = "llmdeploy-test/ml-vllm-e2e-base:dev"


@pytest.fixture(scope="module")
def client():
    return docker_client()


@pytest.fixture(scope="module")
def image(client) -> str:
    yield from vllm_image(client, BASE)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tiny_model_store(tmp_path_factory)


@pytest.fixture(scope="module")
def testing_settings():
    """The near-empty image borrows the host's Python, ML venv and workers package (test-only mounts)."""
    with override_settings(CONSOLE_TESTING=True, DOCKER_TEST_EXTRA_MOUNTS=host_mounts()):
        yield


def test_vllm_deployment_in_docker_runs_answers_and_stops(
    admin, client, image, store, testing_settings, gateway, settings
):
    settings.DEPLOY_HEALTH_SECONDS, settings.JOB_CANCEL_POLL_SECONDS = 0.5, 0.2
    settings.DEPLOY_STOP_GRACE_SECONDS = 20
    host = Host.objects.create(
        name="vllm-docker-node", runtime=Host.Runtime.DOCKER, status=Host.Status.ONLINE, model_store=str(store)
    )
    artifact = ready_artifact(host, store / "tiny", repo_id=REPO)
    image_id = client.api.inspect_image(image)["Id"]  # the digest the admin enters: this build's own id
    allowed = image_allow(actor=admin, reference=image, digest=image_id, backend="vllm")
    assert allowed.pinned == f"llmdeploy-vllm-test@{image_id}"
    deployment = lifecycle.deployment_create(
        actor=admin,
        name="vllm-docker",
        spec={"artifact": artifact.pk, "backend": "vllm", "device": "cpu", "image": image, "max_model_len": 256},
    )
    runtime, labels = DockerRuntime(), {LABEL_DEPLOYMENT: str(deployment.pk)}
    try:
        watcher = run_job_in_thread(deployment.job_id)
        deployment = wait_state(deployment, {Deployment.State.RUNNING, Deployment.State.FAILED}, timeout=180)
        assert deployment.state == Deployment.State.RUNNING, deployment.failure_detail
        assert deployment.server == "vllm_serve.py 0.34.0"

        [handle] = runtime.find(labels)
        attrs = client.api.inspect_container(handle.ref)
        assert attrs["Config"]["Image"] == image_id  # the allowed build, by its digest
        # The image's entrypoint `vllm serve` runs with the backend's arguments, behind the key-loading wrapper.
        assert attrs["Config"]["Entrypoint"][:2] == ["/bin/sh", "-c"]
        assert attrs["Config"]["Entrypoint"][-2:] == ["/usr/local/bin/vllm", "serve"]
        assert deployment.command[:3] == ["/usr/local/bin/vllm", "serve", "/data/tiny"]
        assert attrs["Args"][-len(deployment.command) + 2 :] == deployment.command[2:]
        command = deployment.command
        assert command[command.index("--served-model-name") + 1] == REPO and "--max-model-len" in command
        assert command[command.index("--port") + 1] == "8000" and "--model-id" not in command
        key = deployment.server_key.reveal()
        assert key not in json.dumps(attrs) and "VLLM_API_KEY=" not in json.dumps(attrs["Config"]["Env"])
        mounts = {mount["Destination"]: mount for mount in attrs["Mounts"]}
        assert mounts["/run/secrets/env-vllm_api_key"]["RW"] is False and mounts["/data/tiny"]["RW"] is False
        assert "/data" not in mounts  # the model's directory only, never the whole store
        assert attrs["HostConfig"]["PortBindings"]["8000/tcp"][0]["HostIp"] == "127.0.0.1"
        assert not attrs["HostConfig"].get("DeviceRequests")  # a CPU spec asks for no GPU

        playground_answers(admin, deployment)
        openai_answers(gateway, admin, deployment)

        lifecycle.deployment_stop(actor=admin, deployment=deployment)
        watcher.join(60)
        assert not watcher.is_alive()
        deployment = wait_state(deployment, {Deployment.State.STOPPED})
        assert runtime.find(labels) == []  # stopped and removed
        assert Job.objects.get(pk=deployment.job_id).status == Job.Status.CANCELLED
        lines = list(JobLogLine.objects.filter(job_id=deployment.job_id).values_list("text", flat=True))
        assert "Application startup complete." in "\n".join(lines)
        assert any("[shutdown] API server: shutdown triggered" in line for line in lines)
        assert any(line.startswith("stopped (exited, status 0)") for line in lines)  # vLLM's clean exit
    finally:
        for handle in runtime.find(labels):
            runtime.remove(handle)

"""A deployment on a docker host without GPUs, through the serve job and a real dockerd: the production
invocation and labels, no GPU request, logs streamed into the job, and the reconciler after the container is
killed behind the console's back (the deployment fails with a cause) and with an orphan container."""

from __future__ import annotations

import json
import time

import pytest
import requests
from text_generation import Client

from deployments.models import AllowedImage, Deployment, Host, Job, JobLogLine
from deployments.serving import services as lifecycle
from tests.support.deploy_fixtures import ready_artifact, run_job_in_thread, wait_state
from tests.workers.test_runtime_docker import IMAGE, LAUNCHER, client, image, run_spec, store, testing_settings
from workers import reconcile
from workers.runtimes.base import LABEL_DEPLOYMENT
from workers.runtimes.docker import DockerRuntime

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True)]
__all__ = ["client", "image", "store", "testing_settings"]  # fixtures shared with the runtime tests


def test_docker_deployment_killed_behind_the_consoles_back(admin, client, image, store, testing_settings, settings):
    settings.DEPLOY_HEALTH_SECONDS, settings.JOB_CANCEL_POLL_SECONDS = 0.5, 0.2
    settings.JOB_LEASE_SECONDS = 3  # the watcher notices its lost lease within a second
    host = Host.objects.create(
        name="docker-node", runtime=Host.Runtime.DOCKER, status=Host.Status.ONLINE, model_store=str(store)
    )
    artifact = ready_artifact(host, store / "tiny")
    AllowedImage.objects.create(reference=IMAGE)
    deployment = lifecycle.deployment_create(
        actor=admin,
        name="docker-tiny",
        spec={
            "artifact": artifact.pk,
            "device": "cpu",
            "image": IMAGE,
            "max_input_tokens": 200,
            "max_total_tokens": 256,
        },
    )
    assert deployment.gpu_indexes == []
    watcher = run_job_in_thread(deployment.job_id)
    deployment = wait_state(deployment, {Deployment.State.RUNNING, Deployment.State.FAILED}, timeout=180)
    assert deployment.state == Deployment.State.RUNNING, deployment.failure_detail
    key = deployment.server_key.reveal()
    answer = Client(deployment.endpoint, headers={"Authorization": f"Bearer {key}"}, timeout=60).generate(
        "hello", max_new_tokens=3
    )
    assert answer.details.generated_tokens == 3
    # Issue 12 item 4: the published port refuses a caller without the deployment's key...
    unkeyed = requests.post(f"{deployment.endpoint}/generate", json={"inputs": "hello"}, timeout=30)
    assert unkeyed.status_code == 401

    runtime = DockerRuntime()
    [handle] = runtime.find({LABEL_DEPLOYMENT: str(deployment.pk)})
    container = client.containers.get(handle.ref)
    # ...and the key is in no part of the container's configuration: a wrapper reads it from a mounted file.
    assert key not in json.dumps(client.api.inspect_container(handle.ref))
    assert key not in json.dumps(client.api.top(handle.ref, ps_args="-eo pid,args"))
    assert container.attrs["Config"]["Entrypoint"][:2] == ["/bin/sh", "-c"]
    assert deployment.command[0] == LAUNCHER  # the image's entrypoint (here the shim to serve.py), without the wrapper
    assert container.attrs["Args"][-len(deployment.command) :] == deployment.command  # what the page shows runs
    assert deployment.runs_development_server  # /info said so: the shim runs serve.py
    mounts = {mount["Destination"]: mount for mount in container.attrs["Mounts"]}
    assert mounts["/run/secrets/env-api_key"]["RW"] is False
    assert container.attrs["Config"]["Labels"]["llmdeploy.name"] == "docker-tiny"
    assert not container.attrs["HostConfig"].get("DeviceRequests")  # no GPU request on a host without GPUs
    binding = container.attrs["HostConfig"]["PortBindings"]["80/tcp"][0]
    assert binding["HostIp"] == "127.0.0.1"
    # Docker hands over log lines a moment after the server prints them: the line may follow "running".
    deadline = time.monotonic() + 15
    while not JobLogLine.objects.filter(job_id=deployment.job_id, stream="server", text__contains="Connected").exists():
        assert time.monotonic() < deadline, "the server's Connected line never reached the job log"
        time.sleep(0.2)

    # The watching job is lost for good, then the container is killed behind the console's back.
    Job.objects.filter(pk=deployment.job_id).update(status=Job.Status.FAILED, lease_owner="gone")
    watcher.join(30)
    assert not watcher.is_alive()
    container.kill()
    result = reconcile.reconcile_host("docker-node")
    assert result["failed"] == [deployment.pk]
    deployment.refresh_from_db()
    assert deployment.state == Deployment.State.FAILED and deployment.failure_cause == "crashed"
    assert runtime.find({LABEL_DEPLOYMENT: str(deployment.pk)}) == []

    # A container no deployment wants is removed.
    orphan = runtime.start(
        run_spec(
            "orphan",
            store,
            labels={"llmdeploy.managed": "true", LABEL_DEPLOYMENT: "999999", "llmdeploy.test-suite": "runtime-docker"},
        )
    )
    assert reconcile.reconcile_host("docker-node")["removed"] == [orphan.name]
    assert runtime.find({LABEL_DEPLOYMENT: "999999"}) == []

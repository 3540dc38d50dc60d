"""A deployment's life on the process runtime with real parts: serve.py comes up on a tiny model, reaches
running, answers the text-generation client, stops with its whole process tree, frees its GPUs; a server that
dies is diagnosed; the reconciler adopts, fails and removes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from text_generation import Client

from audit.models import AuditEvent
from console.errors import ApplicationError
from deployments.models import Deployment, GpuReservation, Job, JobLogLine
from deployments.serving import services as lifecycle
from tests.conftest import need
from tests.support.deploy_fixtures import (
    process_host,
    ready_artifact,
    run_job_in_thread,
    tiny_model_in_store,
    wait_state,
)
from tests.support.serve_process import ml_python
from workers import reconcile, runner
from workers.runtimes.base import LABEL_DEPLOYMENT
from workers.runtimes.process import ProcessRuntime

pytestmark = pytest.mark.django_db(transaction=True)
SPEC = {"device": "gpu", "max_input_tokens": 200, "max_total_tokens": 256, "max_concurrent_requests": 8}


@pytest.fixture
def tiny(settings, tmp_path):
    need(ml_python() is not None, "the ML environment (make ml-env) runs serve.py")
    settings.DEPLOY_HEALTH_SECONDS = 0.5
    settings.JOB_CANCEL_POLL_SECONDS = 0.2
    settings.DEPLOY_STOP_GRACE_SECONDS = 20
    settings.JOB_LEASE_SECONDS = 3  # a watcher whose job was taken away notices within a second
    host = process_host(gpus=1)
    return host, ready_artifact(host, tiny_model_in_store())


def test_launch_run_generate_stop(admin, tiny):
    _host, artifact = tiny
    deployment = lifecycle.deployment_create(actor=admin, name="tiny", spec={"artifact": artifact.pk, **SPEC})
    assert deployment.state == Deployment.State.STARTING and deployment.gpu_indexes == [0]
    assert GpuReservation.objects.filter(holder=deployment.holder).count() == 1
    job = deployment.job
    assert job.queue == "host.local" and job.kind == Job.Kind.SERVE
    thread = run_job_in_thread(job.pk)
    deployment = wait_state(deployment, {Deployment.State.RUNNING, Deployment.State.FAILED})
    assert deployment.state == Deployment.State.RUNNING, deployment.failure_detail
    assert deployment.endpoint.startswith("http://127.0.0.1:")
    # Issue 13 item 5: what runs is named plainly: serve.py here (no TGI on this machine), in the command, the
    # server name and the log, not TGI's launcher.
    assert deployment.command[1:3] == ["-m", "workers.jobs.serve"] and "--usage-stats" in deployment.command
    assert deployment.server.startswith("serve.py") and deployment.runs_development_server
    key = {"Authorization": f"Bearer {deployment.server_key.reveal()}"}  # the console's alone (item 4)
    response = Client(deployment.endpoint, headers=key, timeout=60).generate("hello", max_new_tokens=5)
    assert response.details.generated_tokens == 5

    [handle] = ProcessRuntime().find({LABEL_DEPLOYMENT: str(deployment.pk)})
    pgid = int(handle.ref)
    lifecycle.deployment_stop(actor=admin, deployment=deployment)
    thread.join(60)
    assert not thread.is_alive()
    deployment = wait_state(deployment, {Deployment.State.STOPPED})
    assert not ProcessRuntime._group_alive(pgid), "stop ends the whole process tree"
    assert not GpuReservation.objects.filter(holder=deployment.holder).exists()
    assert ProcessRuntime().find({LABEL_DEPLOYMENT: str(deployment.pk)}) == []
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    lines = JobLogLine.objects.filter(job=job)
    assert lines.count() == job.log_seq and list(lines.values_list("seq", flat=True)) == list(range(1, job.log_seq + 1))
    server = list(lines.filter(stream="server").values_list("text", flat=True))
    assert any("Connected" in line for line in server) and any("signal received" in line for line in server)
    assert any("This is not Text Generation Inference" in line for line in server)
    assert not any("text_generation_router" in line or "Using backend V3" in line for line in server)
    assert any(line.startswith("running: serve.py") for line in lines.values_list("text", flat=True))
    actions = set(
        AuditEvent.objects.filter(target_id=str(deployment.pk), target_type="deployments.deployment").values_list(
            "action", flat=True
        )
    )
    assert {
        "deployment.created",
        "deployment.launched",
        "deployment.running",
        "deployment.stop_requested",
        "deployment.stopped",
    } <= actions


def _server_pids(pgid: int) -> list[int]:
    """The model server's processes (the group minus its sh wrapper)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != pgid:
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def test_a_crashed_server_is_diagnosed_and_restarted_with_backoff(admin, tiny, settings):
    settings.DEPLOY_RESTART_BACKOFF_SECONDS = 0
    _host, artifact = tiny
    deployment = lifecycle.deployment_create(actor=admin, name="crash", spec={"artifact": artifact.pk, **SPEC})
    thread = run_job_in_thread(deployment.job_id)
    deployment = wait_state(deployment, {Deployment.State.RUNNING})
    [handle] = ProcessRuntime().find({LABEL_DEPLOYMENT: str(deployment.pk)})
    for pid in _server_pids(int(handle.ref)):
        os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would
    thread.join(60)
    deployment = wait_state(deployment, {Deployment.State.FAILED})
    assert deployment.failure_cause == "host_oom_kill", deployment.failure_detail
    assert "signal 9" in deployment.next_step or "memory" in deployment.next_step.lower()
    assert deployment.next_restart_at is not None
    assert not GpuReservation.objects.filter(holder=deployment.holder).exists()

    result = reconcile.reconcile_console()
    assert result["restarted"] == [deployment.pk]
    deployment.refresh_from_db()
    assert deployment.restart_count == 1
    again = run_job_in_thread(deployment.job_id)
    deployment = wait_state(deployment, {Deployment.State.RUNNING})
    assert GpuReservation.objects.filter(holder=deployment.holder).count() == 1
    lifecycle.deployment_stop(actor=admin, deployment=deployment)
    again.join(60)
    wait_state(deployment, {Deployment.State.STOPPED})


def test_launch_refuses_arguments_the_launcher_would_refuse(admin, tiny):
    _host, artifact = tiny
    with pytest.raises(ApplicationError) as refused:
        lifecycle.deployment_create(
            actor=admin,
            name="bad",
            spec={"artifact": artifact.pk, **SPEC, "max_input_tokens": 300, "max_total_tokens": 300},
        )
    assert refused.value.field == "max_input_tokens"
    assert not Deployment.objects.filter(name="bad").exists() and not Job.objects.exists()


def test_reconciler_adopts_a_running_server_and_removes_orphans(admin, tiny, settings):
    _host, artifact = tiny
    deployment = lifecycle.deployment_create(actor=admin, name="adopt", spec={"artifact": artifact.pk, **SPEC})
    first = deployment.job
    thread = run_job_in_thread(first.pk)
    deployment = wait_state(deployment, {Deployment.State.RUNNING})
    # The watching job goes away (its worker died for good) while the server keeps running.
    lost = runner.owner_name()
    Job.objects.filter(pk=first.pk).update(status=Job.Status.FAILED, lease_owner=lost)
    thread.join(30)
    assert not thread.is_alive()
    result = reconcile.reconcile_host("local")
    assert result["adopted"] == [deployment.pk]
    deployment.refresh_from_db()
    assert deployment.job_id != first.pk and deployment.state == Deployment.State.RUNNING
    adopter = run_job_in_thread(deployment.job_id)
    wait_state(deployment, {Deployment.State.RUNNING})
    assert len(ProcessRuntime().find({LABEL_DEPLOYMENT: str(deployment.pk)})) == 1
    lifecycle.deployment_stop(actor=admin, deployment=deployment)
    adopter.join(60)
    wait_state(deployment, {Deployment.State.STOPPED})
    assert "adopted the running server" in "\n".join(
        JobLogLine.objects.filter(job_id=deployment.job_id).values_list("text", flat=True)
    )


def test_restart_backoff_is_exponential_and_capped(settings):
    settings.DEPLOY_RESTART_BACKOFF_SECONDS, settings.DEPLOY_RESTART_BACKOFF_MAX = 10, 600
    assert [lifecycle.restart_delay(n) for n in range(8)] == [10, 20, 40, 80, 160, 320, 600, 600]

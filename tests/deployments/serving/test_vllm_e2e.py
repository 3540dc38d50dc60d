"""A vLLM deployment end to end on the process runtime, with real parts and no GPU (issue 16's show): created
through the REST API, launched by a real Celery agent worker running the serve job, `vllm serve`'s command line
run by the stand-in (workers/jobs/vllm_serve.py, as the process runtime runs it where vLLM is not installed),
running once /health and /v1/models answer, used from the playground and the official `openai` client through
the gateway, left alone by the reconciler while its job watches, stopped with its whole process tree. And a launch
that fails is diagnosed with the vLLM rule book's cause, title and next step."""

from __future__ import annotations

import os
import time

import pytest

from audit.models import AuditEvent
from deployments.backends import get_backend
from deployments.models import Deployment, GpuReservation, Job, JobLogLine
from deployments.serving import services as lifecycle
from tests.conftest import need
from tests.deployments.gateway.conftest import _gateway_drained
from tests.support.agent import Agent
from tests.support.deploy_fixtures import (
    process_host,
    ready_artifact,
    run_job_in_thread,
    tiny_model_in_store,
    wait_state,
)
from tests.support.serve_process import ml_python
from tests.support.vllm_deploy import REPO, openai_answers, playground_answers
from workers import reconcile
from workers.runtimes.base import LABEL_DEPLOYMENT
from workers.runtimes.process import ProcessRuntime

pytestmark = pytest.mark.django_db(transaction=True)
__all__ = ["_gateway_drained"]  # the gateway seals its records before the database is flushed
VLLM, TGI = get_backend("vllm"), get_backend("tgi")


def _poll(fetch, done, timeout: float = 120, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fetch()
        if done(value):
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {value}")


def _remove_servers(deployment_id: int | None) -> None:
    """A failed test leaves no server behind (the next run's deployment would get its id and adopt it)."""
    runtime = ProcessRuntime()
    for handle in runtime.find({LABEL_DEPLOYMENT: str(deployment_id)}) if deployment_id else []:
        runtime.remove(handle)


def test_vllm_deployment_runs_answers_and_stops_through_the_agent(redis_url, admin, api, gateway):
    need(ml_python() is not None, "the ML environment (make ml-env) runs vllm_serve.py")
    admin_api = api(admin)
    name = f"vllm-{os.getpid()}"
    host = process_host(name, gpus=1, gpu_bytes=80 * 10**9)  # vLLM takes 0.9 of it by default
    artifact = ready_artifact(host, tiny_model_in_store(), repo_id=REPO)
    agent, created = Agent(redis_url, name), None
    try:
        spec = {"artifact": artifact.pk, "backend": "vllm", "device": "gpu", "max_model_len": 256, "max_num_seqs": 8}
        created = admin_api.post("/api/v1/deployments/", {"name": "vllm-tiny", "spec_input": spec}).data
        assert created["state"] == "starting" and created["host"] == name and created["gpu_indexes"] == [0]
        state = _poll(
            lambda: admin_api.get(f"/api/v1/deployments/{created['id']}/").data,
            lambda d: d["state"] in ("running", "failed"),
            what="running",
        )
        assert state["state"] == "running", state["failure_detail"]
        deployment = Deployment.objects.get(pk=created["id"])
        # What runs is `vllm serve`'s command line from the vLLM backend, on its stand-in, and it is named so.
        assert deployment.command[1:4] == ["-m", "workers.jobs.vllm_serve", artifact.path]
        command = deployment.command[3:]
        assert command[command.index("--served-model-name") + 1] == REPO
        assert command[command.index("--max-model-len") + 1] == "256" and "--gpu-memory-utilization" in command
        assert "--max-total-tokens" not in command and "--model-id" not in command  # nothing of TGI's
        assert state["server"] == "vllm_serve.py 0.34.0"
        page = admin_api.client.get(f"/deployments/{deployment.pk}/").content.decode()
        assert "it speaks vLLM's protocol but is not vLLM" in page and "not TGI" not in page
        running = AuditEvent.objects.get(action="deployment.running", target_id=str(deployment.pk))
        assert running.details["max_total_tokens"] == 256  # /v1/models' max_model_len, recorded as TGI's /info one
        assert GpuReservation.objects.filter(holder=deployment.holder).count() == 1
        # The reconciler leaves a server its job watches alone.
        assert reconcile.reconcile_host(name) == {"adopted": [], "failed": [], "removed": []}

        playground_answers(admin, deployment)
        openai_answers(gateway, admin, deployment)

        [handle] = ProcessRuntime().find({LABEL_DEPLOYMENT: str(deployment.pk)})
        admin_api.post(f"/api/v1/deployments/{deployment.pk}/stop/", expected=200)
        stopped = _poll(
            lambda: Deployment.objects.get(pk=deployment.pk),
            lambda d: d.state in ("stopped", "failed"),
            what="stopped",
        )
        assert stopped.state == "stopped", (stopped.failure_cause, stopped.failure_detail)
        assert not ProcessRuntime._group_alive(int(handle.ref)), "stop ends the whole process tree"
        assert ProcessRuntime().find({LABEL_DEPLOYMENT: str(deployment.pk)}) == []
        assert not GpuReservation.objects.filter(holder=deployment.holder).exists()
        _poll(lambda: Job.objects.get(pk=state["job"]).status, lambda s: s == "cancelled", what="the job's end")
        server = list(JobLogLine.objects.filter(job_id=state["job"], stream="server").values_list("text", flat=True))
        for line in ("Starting vLLM server on", VLLM.ready_line, "[shutdown] API server: shutdown triggered"):
            assert any(line in text for text in server), line
        assert not any(text.rsplit(" ", 1)[-1] == "Connected" for text in server)  # serve.py's (TGI's) ready line
    finally:
        agent.stop()
        _remove_servers(created["id"] if created else None)


def test_a_failed_vllm_launch_is_diagnosed_with_the_vllm_rule(admin, settings, tmp_path):
    """The model's files are gone from the store behind the console's back: vLLM refuses the directory, and the
    deployment shows the vLLM rule's cause, title, evidence and next step (not TGI's)."""
    need(ml_python() is not None, "the ML environment (make ml-env) runs vllm_serve.py")
    settings.JOB_CANCEL_POLL_SECONDS = 0.2
    host = process_host("vllm-crash")
    model_dir = tmp_path / "tiny"
    artifact = ready_artifact(host, model_dir, repo_id=REPO)
    deployment = lifecycle.deployment_create(
        actor=admin,
        name="vllm-gone",
        spec={"artifact": artifact.pk, "backend": "vllm", "device": "cpu", "max_model_len": 256},
        restart_policy=Deployment.RestartPolicy.NEVER,
    )
    model_dir.mkdir()  # the directory is there, its config.json and weights are not
    thread = run_job_in_thread(deployment.job_id)
    deployment = wait_state(deployment, {Deployment.State.RUNNING, Deployment.State.FAILED})
    thread.join(30)
    assert deployment.state == Deployment.State.FAILED
    refusal = f"Invalid repository ID or local directory specified: '{model_dir}'"
    [rule] = [rule for rule in VLLM.rules.rules if any(pattern.search(refusal) for pattern in rule.patterns)]
    assert deployment.failure_cause == "not_found"
    title, *evidence = deployment.failure_detail.split("\n")
    assert title == str(rule.title)
    assert rule.cause == "not_found" and refusal in "\n".join(evidence)
    assert deployment.next_step == str(rule.next_step)
    server = list(JobLogLine.objects.filter(job_id=deployment.job_id, stream="server").values_list("text", flat=True))
    tgi = TGI.diagnose(server, exit_code=1)
    assert (str(tgi.title), str(tgi.next_step)) != (title, deployment.next_step)  # the vLLM book's reading
    assert ProcessRuntime().find({LABEL_DEPLOYMENT: str(deployment.pk)}) == []

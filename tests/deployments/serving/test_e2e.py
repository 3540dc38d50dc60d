"""End to end with real parts and no GPU: a real Celery agent worker for the host's queue, the REST API,
serve.py through the process runtime, the playground and job-log websockets through the real ASGI app.
And the fault test: the agent is killed during a launch; afterwards exactly one server runs."""

from __future__ import annotations

import os
import time

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings

from audit.models import AuditEvent
from console.asgi import application
from deployments.jobs.reaper import jobs_reap
from deployments.models import Deployment, GpuReservation, Job, JobLogLine
from tests.conftest import need
from tests.console.test_websocket import session_cookie
from tests.support.agent import WORKER_ENV, Agent
from tests.support.aio import run_async
from tests.support.deploy_fixtures import tiny_model_in_store
from tests.support.serve_process import ml_python
from workers import reconcile
from workers.runtimes.base import LABEL_DEPLOYMENT
from workers.runtimes.process import ProcessRuntime

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = (b"origin", b"http://127.0.0.1")


def _poll(fetch, done, timeout: float = 120, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fetch()
        if done(value):
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}: {value}")


def _register_host_and_model(admin_api, name: str) -> int:
    admin_api.post(
        "/api/v1/hosts/",
        {"name": name, "runtime": "process", "status": "manual", "model_store": str(settings.MODEL_STORE)},
    )
    admin_api.post(
        "/api/v1/gpus/", {"host": name, "index": 0, "name": "Test GPU", "memory_total": 16 * 10**9, "health": "ok"}
    )
    directory = str(tiny_model_in_store())
    artifact = admin_api.post(
        "/api/v1/models/import/", {"host": name, "directory": directory, "name": f"tests-{name}"}, expected=202
    ).data
    _poll(
        lambda: admin_api.get(f"/api/v1/models/{artifact['id']}/").data["status"],
        lambda s: s in ("ready", "failed"),
        what="the import job",
    )
    assert admin_api.get(f"/api/v1/models/{artifact['id']}/").data["status"] == "ready"
    return artifact["id"]


def _state(admin_api, deployment_id: int) -> dict:
    return admin_api.get(f"/api/v1/deployments/{deployment_id}/").data


async def _playground(cookie: bytes, deployment_id: int) -> list[dict]:
    socket = WebsocketCommunicator(
        application, f"/ws/deployments/{deployment_id}/playground/", headers=[ORIGIN, (b"cookie", cookie)]
    )
    connected, _ = await socket.connect()
    assert connected
    await socket.send_json_to(
        {
            "type": "generate",
            "mode": "completion",
            "prompt": "hello model",
            "parameters": {"max_new_tokens": 12, "do_sample": False},
        }
    )
    events = []
    while not events or events[-1]["type"] not in ("end", "error"):
        events.append(await socket.receive_json_from(timeout=60))
    await socket.disconnect()
    return events


async def _log_stream(cookie: bytes, job_id: int) -> list[dict]:
    socket = WebsocketCommunicator(application, f"/ws/jobs/{job_id}/", headers=[ORIGIN, (b"cookie", cookie)])
    connected, _ = await socket.connect()
    assert connected
    await socket.send_json_to({"type": "subscribe", "after": 0})
    items = []
    while True:
        message = await socket.receive_json_from(timeout=30)
        if message["type"] == "caught_up":
            break
        items.extend(message["items"])
    await socket.disconnect()
    return items


def test_register_import_deploy_use_stop(redis_url, admin, api):
    need(ml_python() is not None, "the ML environment (make ml-env) runs serve.py")
    admin_api = api(admin)
    name = f"e2e-{os.getpid()}"
    agent = Agent(redis_url, name)
    try:
        artifact_id = _register_host_and_model(admin_api, name)
        created = admin_api.post(
            "/api/v1/deployments/",
            {
                "name": "e2e-tiny",
                "spec_input": {
                    "artifact": artifact_id,
                    "device": "gpu",
                    "max_input_tokens": 200,
                    "max_total_tokens": 256,
                },
            },
        ).data
        assert created["state"] in ("starting", "downloading") and created["host"] == name
        deployment = _poll(
            lambda: _state(admin_api, created["id"]), lambda d: d["state"] in ("running", "failed"), what="running"
        )
        assert deployment["state"] == "running", deployment["failure_detail"]

        cookie = session_cookie(admin)
        events = run_async(_playground(cookie, created["id"]))
        tokens = [e for e in events if e["type"] == "token"]
        end = events[-1]
        assert end["type"] == "end" and end["generated_tokens"] == len(tokens) == 12
        assert end["ttft_ms"] > 0 and end["total_ms"] >= end["ttft_ms"]
        used = AuditEvent.objects.get(action="deployment.used", target_id=str(created["id"]))
        assert used.details["generated_tokens"] == 12 and "prompt" not in used.details

        [handle] = ProcessRuntime().find({LABEL_DEPLOYMENT: str(created["id"])})
        admin_api.post(f"/api/v1/deployments/{created['id']}/stop/", expected=200)
        _poll(lambda: _state(admin_api, created["id"])["state"], lambda s: s == "stopped", what="stopped")
        assert not ProcessRuntime._group_alive(int(handle.ref))
        assert not GpuReservation.objects.exists()
        job = Job.objects.get(pk=deployment["job"])
        _poll(lambda: Job.objects.get(pk=job.pk).status, lambda s: s == "cancelled", what="the job's end")
        job.refresh_from_db()
        items = run_async(_log_stream(cookie, job.pk))
        assert len(items) == job.log_seq == JobLogLine.objects.filter(job=job).count()
        assert [item["seq"] for item in items] == list(range(1, job.log_seq + 1))
        assert any(item["stream"] == "server" and "Connected" in item["text"] for item in items)
    finally:
        agent.stop()


def test_agent_killed_during_launch_leaves_exactly_one_server(redis_url, admin, api):
    need(ml_python() is not None, "the ML environment (make ml-env) runs serve.py")
    admin_api = api(admin)
    name = f"fault-{os.getpid()}"
    agent = Agent(redis_url, name)
    replacement = None
    try:
        artifact_id = _register_host_and_model(admin_api, name)
        created = admin_api.post(
            "/api/v1/deployments/",
            {
                "name": "fault-tiny",
                "spec_input": {
                    "artifact": artifact_id,
                    "device": "gpu",
                    "max_input_tokens": 200,
                    "max_total_tokens": 256,
                },
            },
        ).data
        runtime = ProcessRuntime()
        labels = {LABEL_DEPLOYMENT: str(created["id"])}
        _poll(lambda: runtime.find(labels), bool, timeout=60, what="the server process")
        assert _state(admin_api, created["id"])["state"] == "starting"  # killed mid-launch, before running
        agent.kill()
        time.sleep(float(WORKER_ENV["JOB_LEASE_SECONDS"]) + 1)
        # The restarted agent retries the orphaned launch at start-up (its serve job then watches the server for
        # good): a prefork pool answers the readiness ping from its main process meanwhile, as production agents do.
        replacement = Agent(redis_url, name, pool="prefork")
        _poll(
            lambda: jobs_reap()["retried"] or Job.objects.get(pk=created["job"]).attempts > 1,
            bool,
            timeout=30,
            what="the reaper's retry",
        )
        deployment = _poll(
            lambda: _state(admin_api, created["id"]),
            lambda d: d["state"] in ("running", "failed"),
            what="running after the retry",
        )
        assert deployment["state"] == "running", deployment["failure_detail"]
        handles = runtime.find(labels)
        assert len(handles) == 1 and runtime.status(handles[0]).alive
        lines = "\n".join(JobLogLine.objects.filter(job_id=created["job"]).values_list("text", flat=True))
        assert "adopted the running server" in lines
        assert reconcile.reconcile_host(name) == {"adopted": [], "failed": [], "removed": []}
        assert len(runtime.find(labels)) == 1
        admin_api.post(f"/api/v1/deployments/{created['id']}/stop/", expected=200)
        _poll(lambda: Deployment.objects.get(pk=created["id"]).state, lambda s: s == "stopped", what="stopped")
        assert runtime.find(labels) == []
    finally:
        agent.stop()
        if replacement is not None:
            replacement.stop()

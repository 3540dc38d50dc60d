"""Issue 12, item 4: a model server answers only the console. Each start generates the deployment's own API key,
stored encrypted; it reaches the server as a 0600 file that a small sh wrapper reads into API_KEY, so neither the
process list, the job log, the API nor the audit log holds it; a restart rotates it (real serve.py, process
runtime). The docker side (`docker inspect`) is in tests/deployments/serving/test_docker.py."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests
from django.db import connection

from audit.models import AuditEvent
from deployments.models import Deployment, JobLogLine
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
from workers.runtimes.base import LABEL_DEPLOYMENT
from workers.runtimes.process import ProcessRuntime

pytestmark = pytest.mark.django_db(transaction=True)
SPEC = {"device": "gpu", "max_input_tokens": 200, "max_total_tokens": 256}


def _generate(endpoint: str, key: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    body = {"inputs": "hello", "parameters": {"max_new_tokens": 3}}
    return requests.post(f"{endpoint}/generate", json=body, headers=headers, timeout=60)


def _everything_a_user_can_see(deployment: Deployment, api) -> str:
    """The process list, the job log, the deployment's API answer and its audit events, as one text."""
    processes = subprocess.run(["ps", "-eo", "pid,args", "-ww"], capture_output=True, text=True, check=True).stdout
    log = "\n".join(JobLogLine.objects.filter(job__params__deployment=deployment.pk).values_list("text", flat=True))
    answer = json.dumps(api.get(f"/api/v1/deployments/{deployment.pk}/").data, default=str)
    events = json.dumps(list(AuditEvent.objects.values("action", "diff", "detail")), default=str)
    return "\n".join([processes, log, answer, events, json.dumps(deployment.command)])


def test_the_server_refuses_callers_without_its_key_and_the_key_shows_nowhere(admin, api, settings):
    need(ml_python() is not None, "the ML environment (make ml-env) runs serve.py")
    settings.DEPLOY_HEALTH_SECONDS, settings.JOB_CANCEL_POLL_SECONDS = 0.5, 0.2
    host = process_host(gpus=1)
    artifact = ready_artifact(host, tiny_model_in_store())
    deployment = lifecycle.deployment_create(actor=admin, name="keyed", spec={"artifact": artifact.pk, **SPEC})
    thread = run_job_in_thread(deployment.job_id)
    deployment = wait_state(deployment, {Deployment.State.RUNNING, Deployment.State.FAILED})
    assert deployment.state == Deployment.State.RUNNING, deployment.failure_detail
    key = deployment.server_key.reveal()
    assert len(key) >= 32

    # The attack: a direct call to the server's port, past use_deployment and its audit.
    assert _generate(deployment.endpoint, None).status_code == 401
    assert _generate(deployment.endpoint, "guessed").status_code == 401
    assert _generate(deployment.endpoint, key).status_code == 200

    assert key not in _everything_a_user_can_see(deployment, api(admin))
    with connection.cursor() as cursor:  # encrypted at rest
        cursor.execute("SELECT server_key FROM deployments_deployment WHERE id = %s", [deployment.pk])
        assert key not in cursor.fetchone()[0]
    [handle] = ProcessRuntime().find({LABEL_DEPLOYMENT: str(deployment.pk)})
    secret = ProcessRuntime().state_dir / f"{handle.name}.secrets" / "env-api_key"
    assert secret.stat().st_mode & 0o777 == 0o600 and secret.read_text() == key

    # A restart rotates the key: the old one stops working.
    lifecycle.deployment_restart(actor=admin, deployment=deployment)
    thread.join(60)
    deployment.refresh_from_db()
    relaunched = run_job_in_thread(deployment.job_id)
    deployment = wait_state(deployment, {Deployment.State.RUNNING, Deployment.State.FAILED})
    assert deployment.state == Deployment.State.RUNNING, deployment.failure_detail
    rotated = deployment.server_key.reveal()
    assert rotated != key
    assert _generate(deployment.endpoint, key).status_code == 401
    assert _generate(deployment.endpoint, rotated).status_code == 200

    lifecycle.deployment_stop(actor=admin, deployment=deployment)
    relaunched.join(60)
    assert not secret.parent.exists(), "the key file goes with the server"

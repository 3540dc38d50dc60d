"""Issue 12, item 5: the secrets an agent acts with reach it per job from the database, never inside a broker
message. A launch that needs a Hub token is queued on the real Redis broker; the queued message names the job
and nothing more; the agent then decrypts the token and hands it to the server as a file (canary)."""

from __future__ import annotations

import base64
import json

import pytest
import redis

from deployments.models import Deployment
from deployments.serving import services as lifecycle
from tests.conftest import need
from tests.factories import CredentialFactory
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
CANARY = "hf_canary_agent_5b1e9d7c3a"


def _queued(broker: redis.Redis, queue: str) -> list[tuple[bytes, bytes]]:
    """(raw message, decoded body) of every message waiting on a queue of the Redis transport."""
    found = []
    for raw in broker.lrange(queue, 0, -1):
        envelope = json.loads(raw)
        found.append((raw, base64.b64decode(envelope["body"])))
    return found


def test_a_launch_message_names_the_job_and_carries_no_secret(admin, redis_url, settings):
    need(ml_python() is not None, "the ML environment (make ml-env) runs serve.py")
    settings.DEPLOY_HEALTH_SECONDS, settings.JOB_CANCEL_POLL_SECONDS = 0.5, 0.2
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    host = process_host(name="secret-host", gpus=1)
    queue = f"host.{host.name}"
    broker.delete(queue)
    artifact = ready_artifact(host, tiny_model_in_store())
    token = CredentialFactory(name="gated", value=CANARY)
    spec = {"artifact": artifact.pk, "credential": token.pk, "device": "gpu", "max_input_tokens": 200}
    deployment = lifecycle.deployment_create(actor=admin, name="gated", spec={**spec, "max_total_tokens": 256})
    try:
        [(raw, body)] = _queued(broker, queue)
        assert json.loads(body)[0] == [deployment.job_id]  # the job's id, the whole of its arguments
        assert CANARY.encode() not in raw and CANARY.encode() not in body

        thread = run_job_in_thread(deployment.job_id)  # the agent's side: the token from the database
        deployment = wait_state(deployment, {Deployment.State.RUNNING, Deployment.State.FAILED})
        assert deployment.state == Deployment.State.RUNNING, deployment.failure_detail
        [handle] = ProcessRuntime().find({LABEL_DEPLOYMENT: str(deployment.pk)})
        secrets = ProcessRuntime().state_dir / f"{handle.name}.secrets"
        assert (secrets / "hf_token_path").read_text() == CANARY
        assert (secrets / "hf_token_path").stat().st_mode & 0o777 == 0o600
        key = deployment.server_key.reveal()
        for raw, body in _queued(broker, queue) + _queued(broker, "celery"):
            assert CANARY.encode() not in raw + body and key.encode() not in raw + body
        lifecycle.deployment_stop(actor=admin, deployment=deployment)
        thread.join(60)
    finally:
        broker.delete(queue)

"""The serve job copies a server's output (its log lines and the deployment's cursor) taking the deployment's row
before the job's, the order deployment_stop takes them in. The other order deadlocked when a stop arrived while the
server printed (found by the vLLM end-to-end test: PostgreSQL aborted the stop, or the job, which then failed the
deployment instead of stopping it)."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from deployments.backends import get_backend
from deployments.models import Deployment, Job, JobLogLine
from tests.conftest import need
from tests.factories import DeploymentFactory, JobFactory
from tests.support.deploy_fixtures import process_host
from workers import runner
from workers.handlers.serve import _Watch
from workers.runtimes.base import Handle

pytestmark = pytest.mark.django_db(transaction=True)


class _Printing:
    """A runtime whose server printed one line since the cursor."""

    def logs(self, handle, since: int) -> tuple[list[str], int]:
        return ['INFO:     127.0.0.1:40000 - "POST /v1/completions HTTP/1.1" 200 OK'], since + 60


def _waiting_for_a_lock(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    with connection.cursor() as cursor:
        while time.monotonic() < deadline:
            cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
            row = cursor.fetchone()
            if row and row[0] == "Lock":
                return
            time.sleep(0.02)
    raise AssertionError("the copy never waited for the deployment's row")


def test_copying_output_waits_for_the_deployments_row_before_taking_the_jobs():
    need(connection.vendor == "postgresql", "PostgreSQL (DATABASE_URL): SQLite has no row locks")
    host = process_host("lock-order")
    deployment = DeploymentFactory(host=host, state=Deployment.State.RUNNING)
    job = JobFactory(kind=Job.Kind.SERVE, status=Job.Status.RUNNING, target=deployment)
    ctx = runner.JobContext(Job.objects.get(pk=job.pk), "owner")
    watch = _Watch(ctx, deployment, get_backend("vllm"))
    watch.runtime, watch.handle = _Printing(), Handle("process", "1", "x", {}, 1, "http://127.0.0.1:1")
    backend_pid = []

    def copy() -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                backend_pid.append(cursor.fetchone()[0])
            watch.copy_output()
        finally:
            connection.close()

    thread = threading.Thread(target=copy)
    with transaction.atomic():  # a stop request: the deployment's row first...
        Deployment.objects.select_for_update().get(pk=deployment.pk)
        thread.start()
        while not backend_pid:
            time.sleep(0.01)
        _waiting_for_a_lock(backend_pid[0])
        # ...then the job's, which the copy must not be holding while it waits for the deployment's.
        Job.objects.select_for_update(nowait=True).get(pk=job.pk)
    thread.join(10)
    assert not thread.is_alive()
    deployment.refresh_from_db()
    assert deployment.log_cursor == 60
    assert JobLogLine.objects.filter(job=job, stream="server").count() == 1

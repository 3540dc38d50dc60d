"""Jobs against a real Celery worker on real Redis: a job whose process dies every time (like an OOM
kill) is retried by the reaper up to the cap and then fails with its cause; no redelivery loop."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from deployments.jobs.reaper import jobs_reap
from deployments.jobs.services import job_create
from deployments.models import Job
from tests.conftest import _start_worker, _test_database_url, _wait_and_stop

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def job_worker(redis_url):
    queue = f"test-jobs-{time.monotonic_ns()}"
    process, log = _start_worker(
        {
            "REDIS_URL": redis_url,
            "DATABASE_URL": _test_database_url(),
            "JOB_LEASE_SECONDS": "2",
            "JOB_CANCEL_POLL_SECONDS": "0.2",
        },
        "jobs-worker",
        queue,
        pool="prefork",
        include="tests.support.job_handlers",
    )
    # prefork with one child: a child that dies is replaced, as in production.
    for _ in _wait_and_stop(process, log, queue):  # waits until it answers; stops it afterwards
        yield queue, log


def wait_for(predicate, timeout: float, what: str, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    detail = Path(log.name).read_text()[-3000:] if log else ""
    pytest.fail(f"timed out waiting for {what}\n{detail}")


def test_a_job_killed_every_time_stops_after_the_capped_attempts(job_worker):
    queue, log = job_worker
    job = job_create(kind="test.die", actor=None, queue=queue)
    for attempt in range(1, job.max_attempts + 1):
        wait_for(
            lambda a=attempt: Job.objects.filter(pk=job.pk, status="running", attempts=a).exists(),
            60,
            f"attempt {attempt} to start",
            log,
        )
        time.sleep(2.5)  # the lease (2 s) runs out: nobody renews it
        jobs_reap()
    job.refresh_from_db()
    assert job.status == "failed" and job.failure_cause == "worker_lost" and job.attempts == job.max_attempts
    time.sleep(2)
    job.refresh_from_db()
    assert job.attempts == job.max_attempts  # no redelivery loop after the cap


def test_the_worker_survives_and_runs_the_next_job_exactly_once(job_worker, tmp_path):
    queue, log = job_worker
    runs = tmp_path / "runs.txt"
    job = job_create(kind="test.count", actor=None, queue=queue, params={"lines": 5, "runs_file": str(runs)})
    wait_for(lambda: Job.objects.filter(pk=job.pk, status="succeeded").exists(), 60, "the job to succeed", log)
    jobs_reap()
    time.sleep(1)
    assert runs.read_text().split() == [str(job.pk)]

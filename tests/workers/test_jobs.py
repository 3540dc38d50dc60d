"""The job framework: claim once, outcomes with causes, cancel, reaper, re-dispatch, capped attempts."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db.models.functions import Now

import tests.support.job_handlers  # noqa: F401  (registers the test job kinds)
from audit.models import AuditEvent
from deployments.jobs.reaper import jobs_reap
from deployments.jobs.services import job_cancel, job_create
from deployments.models import Job, JobLogLine
from workers import runner

pytestmark = pytest.mark.django_db


def make(kind="test.count", **params) -> Job:
    return job_create(kind=kind, actor=None, params=params)


def lines(job) -> list[str]:
    return list(JobLogLine.objects.filter(job=job).order_by("seq").values_list("text", flat=True))


def test_a_job_runs_once_with_contiguous_log_lines_and_an_audit_event():
    job = make(lines=3)
    assert runner.run(job.pk) == "succeeded"
    assert runner.run(job.pk) == "skipped"  # already done: never twice
    job.refresh_from_db()
    assert job.status == "succeeded" and job.result == {"lines": 3} and job.attempts == 1
    seqs = list(JobLogLine.objects.filter(job=job).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1)) and job.log_seq == len(seqs)
    assert lines(job)[1:4] == ["line 1", "line 2", "line 3"]
    assert AuditEvent.objects.filter(action="job.succeeded", target_id=str(job.pk)).count() == 1


def test_failures_carry_a_cause_and_a_next_step():
    planned = make("test.fail")
    runner.run(planned.pk)
    planned.refresh_from_db()
    assert (planned.status, planned.failure_cause, planned.next_step) == (
        "failed",
        "probe",
        "Nothing to do; it is a test.",
    )
    crash = make("test.fail", crash=True)
    runner.run(crash.pk)
    crash.refresh_from_db()
    assert crash.failure_cause == "error" and "RuntimeError: boom" in crash.failure_detail
    assert any("Traceback" in text for text in lines(crash))


@pytest.mark.django_db(transaction=True)
def test_cancel_is_honoured_within_the_poll_interval(admin, settings):
    settings.JOB_CANCEL_POLL_SECONDS = 0.2
    job = make(lines=200, delay=0.05)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.setdefault("status", runner.run(job.pk)))
    thread.start()
    time.sleep(0.5)
    asked = time.monotonic()
    job_cancel(actor=admin, job=job, action="view")
    thread.join(10)
    assert outcome["status"] == "cancelled" and time.monotonic() - asked < 2
    assert AuditEvent.objects.filter(action="job.cancel_requested").count() == 1


def test_a_pending_job_cancelled_before_it_starts(admin):
    job = make()
    job_cancel(actor=admin, job=job, action="view")
    assert runner.run(job.pk) == "cancelled"
    job.refresh_from_db()
    assert job.status == "cancelled" and "line 1" not in lines(job)


def test_two_workers_never_both_claim_a_job():
    job = make()
    assert runner.claim(job.pk, "worker-a:1:x") is True
    assert runner.claim(job.pk, "worker-b:2:y") is False


def test_the_reaper_retries_a_lost_job_then_fails_it_after_the_capped_attempts():
    job = make(lines=1)
    for attempt in range(1, job.max_attempts + 1):
        assert runner.claim(job.pk, f"dead-worker:{attempt}:x")
        Job.objects.filter(pk=job.pk).update(lease_expires_at=Now() - timedelta(seconds=1))
        result = jobs_reap()
        job.refresh_from_db()
        if attempt < job.max_attempts:
            assert result["retried"] == [job.pk] and job.status == "pending" and job.lease_owner == ""
        else:
            assert result["failed"] == [job.pk]
    assert job.status == "failed" and job.failure_cause == "worker_lost" and job.attempts == job.max_attempts
    assert "stopped" in job.failure_detail and job.next_step
    assert AuditEvent.objects.filter(action="job.failed", target_id=str(job.pk)).count() == 1


def test_pending_jobs_redis_lost_are_dispatched_again(settings):
    job = make()
    Job.objects.filter(pk=job.pk).update(dispatched_at=Now() - timedelta(seconds=settings.JOB_LEASE_SECONDS + 5))
    assert jobs_reap()["redispatched"] == [job.pk]
    assert jobs_reap()["redispatched"] == []  # just dispatched: not again until a lease length passed


def test_a_runner_that_lost_its_lease_writes_no_outcome():
    job = make(lines=1)
    owner = "slow-worker:1:x"
    assert runner.claim(job.pk, owner)
    Job.objects.filter(pk=job.pk).update(lease_owner="new-worker:2:y")  # the reaper gave it to another attempt
    ctx = runner.JobContext(Job.objects.get(pk=job.pk), owner)
    runner._finish(ctx, "failed", detail="late")
    job.refresh_from_db()
    assert job.status == "running" and job.lease_owner == "new-worker:2:y"

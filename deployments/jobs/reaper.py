"""The reaper: no job stays running after its worker died, and no pending job is lost with Redis's queue."""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now

import audit
from audit.telemetry import traced
from deployments.jobs.services import job_dispatch, job_log_line
from deployments.models import Job


@traced("jobs.reap")
@transaction.atomic
def jobs_reap() -> dict[str, list[int]]:
    """Running jobs whose lease expired: retried while attempts remain, else failed with the reason.
    Pending jobs not dispatched for a lease length: dispatched again (Redis may have lost its queue)."""
    retried, failed, redispatched = [], [], []
    expired = Job.objects.select_for_update(skip_locked=True).filter(
        status=Job.Status.RUNNING, lease_expires_at__lt=Now()
    )
    for job in expired:
        owner = job.lease_owner or "unknown"
        if job.attempts < job.max_attempts and not job.cancel_requested:
            job.status, job.lease_owner, job.lease_expires_at = Job.Status.PENDING, "", None
            job.save(update_fields=["status", "lease_owner", "lease_expires_at"])
            job_log_line(
                job,
                f"worker {owner} stopped renewing its lease; retrying "
                f"(attempt {job.attempts + 1} of {job.max_attempts})",
            )
            job_dispatch(job)
            retried.append(job.pk)
        else:
            cancelled = job.cancel_requested
            job.status = Job.Status.CANCELLED if cancelled else Job.Status.FAILED
            job.failure_cause = "" if cancelled else "worker_lost"
            lost = (
                f"The worker running it stopped {job.attempts} time(s) (killed, out of memory, or the host rebooted)."
            )
            job.failure_detail = "" if cancelled else lost
            job.next_step = "" if cancelled else "Check the host's agent and memory, then start the job again."
            job.finished_at, job.lease_expires_at = Now(), None
            job.save()
            job_log_line(
                job, "cancelled" if cancelled else f"failed: {job.failure_detail} — next step: {job.next_step}"
            )
            audit.record(
                action=f"job.{job.status}",
                actor=None,
                actor_name="system",
                target=job,
                outcome="failure",
                detail={"kind": job.kind, "cause": job.failure_cause},
            )
            failed.append(job.pk)
    stale = Now() - timedelta(seconds=settings.JOB_LEASE_SECONDS)
    for job in Job.objects.select_for_update(skip_locked=True).filter(
        Q(dispatched_at__isnull=True) | Q(dispatched_at__lt=stale), status=Job.Status.PENDING
    ):
        job_dispatch(job)
        redispatched.append(job.pk)
    return {"retried": retried, "failed": failed, "redispatched": redispatched}


def jobs_orphaned_by_restart() -> int:
    """At worker start: jobs this host's earlier worker processes held are expired now, not after a lease."""
    host = socket.gethostname()
    mine = Job.objects.filter(status=Job.Status.RUNNING, lease_owner__startswith=f"{host}:")
    expired = 0
    for job in mine:
        pid = int(job.lease_owner.split(":")[1])
        if not _alive(pid):
            expired += Job.objects.filter(pk=job.pk, lease_owner=job.lease_owner).update(lease_expires_at=Now())
    return expired


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

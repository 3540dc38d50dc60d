"""Jobs: create and dispatch, cancel, and the reaper that keeps nothing stuck."""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now

import audit
from audit import context
from audit.celery_context import task_headers
from audit.telemetry import traced
from console.errors import ApplicationError
from console.permissions import require
from deployments.models import Job, JobLogLine

logger = logging.getLogger(__name__)


def _dispatch(job: Job, *, initiator=None) -> None:
    from workers.tasks import run_job

    headers = task_headers(initiator=initiator)
    Job.objects.filter(pk=job.pk).update(dispatched_at=Now())
    transaction.on_commit(lambda: run_job.apply_async(args=[job.pk], queue=job.queue, headers=headers))


@transaction.atomic
def job_create(
    *, kind: str, actor, target=None, params: dict | None = None, queue: str = "celery", max_attempts: int | None = None
) -> Job:
    """Record a job and enqueue it after commit (the service that calls this has authorized the actor)."""
    job = Job.objects.create(
        kind=kind,
        actor=actor if getattr(actor, "is_authenticated", False) else None,
        params=params or {},
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        queue=queue,
        request_id=context.current().request_id,
        max_attempts=max_attempts or settings.JOB_MAX_ATTEMPTS,
    )
    _dispatch(job, initiator=actor)
    return job


@traced("job.cancel")
@transaction.atomic
def job_cancel(*, actor, job: Job, action: str, delete_partial: bool = False, target=None) -> Job:
    """Ask a job to stop; its runner notices within seconds (JOB_CANCEL_POLL_SECONDS). Needs the action
    that started it (e.g. add_model for downloads), on `target` when the job works on one object."""
    require(actor, action, target)
    job = Job.objects.select_for_update().get(pk=job.pk)
    if not job.is_active:
        raise ApplicationError(f"{job} is {job.get_status_display()}; nothing to cancel.")
    if job.cancel_requested:
        return job
    job.cancel_requested, job.cancel_delete_partial = True, delete_partial
    job.save(update_fields=["cancel_requested", "cancel_delete_partial"])
    audit.record(
        action="job.cancel_requested",
        actor=actor,
        target=job,
        detail={"kind": job.kind, "delete_partial": delete_partial},
    )
    if job.status == Job.Status.PENDING:
        _dispatch(job, initiator=actor)  # its worker finishes it as cancelled (and cleans up there)
    return job


def _log(job: Job, text: str) -> None:
    """A line from the reaper, stored and published like the runner's."""
    from console.streams import publish_on_commit

    job.log_seq += 1
    line = JobLogLine.objects.create(job=job, seq=job.log_seq, text=text)
    Job.objects.filter(pk=job.pk).update(log_seq=job.log_seq)
    publish_on_commit(job.stream, [line.as_item()])


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
            _log(
                job,
                f"worker {owner} stopped renewing its lease; retrying "
                f"(attempt {job.attempts + 1} of {job.max_attempts})",
            )
            _dispatch(job)
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
            _log(job, "cancelled" if cancelled else f"failed: {job.failure_detail} — next step: {job.next_step}")
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
        _dispatch(job)
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

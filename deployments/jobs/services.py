"""Jobs: create and dispatch (by task name), cancel, and the lines the console itself writes to a job's log."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.db.models.functions import Now

import audit
from audit import context
from audit.celery_context import task_headers
from audit.telemetry import current_traceparent, trace_headers, traced
from console.dispatch import RUN_JOB, dispatch
from console.errors import ApplicationError
from console.permissions import require
from console.streams import publish_on_commit
from deployments.models import Job, JobLogLine

logger = logging.getLogger(__name__)


def job_dispatch(job: Job, *, initiator=None) -> None:
    """Send the job to its queue after commit, by task name: services never import task modules."""
    # The task continues the current trace (the request's, or the reaper's when it dispatches again).
    headers = {**task_headers(initiator=initiator), **trace_headers()}
    Job.objects.filter(pk=job.pk).update(dispatched_at=Now())
    # robust: the job is committed whatever Redis says, so the caller (a page, the API) must not fail with it.
    transaction.on_commit(lambda: _send(job.pk, job.queue, headers), robust=True)


def _send(job_id: int, queue: str, headers: dict) -> None:
    try:
        # ignore_result: a job reports through its row; without it the send first subscribes to the task's result
        # in Redis, retrying for over a minute while Redis is unreachable.
        dispatch(RUN_JOB, args=[job_id], queue=queue, headers=headers, ignore_result=True)
    except Exception as exc:  # the broker away (kombu's OperationalError, a socket timeout): the reaper sends it
        logger.warning("job %s: not dispatched, the reaper sends it again: %s", job_id, exc)
        # Not dispatched: the reaper's next run sends it, rather than a lease length later.
        Job.objects.filter(pk=job_id, status=Job.Status.PENDING).update(dispatched_at=None)


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
        traceparent=current_traceparent(),
        max_attempts=max_attempts or settings.JOB_MAX_ATTEMPTS,
    )
    job_dispatch(job, initiator=actor)
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
        job_dispatch(job, initiator=actor)  # its worker finishes it as cancelled (and cleans up there)
    return job


def job_log_line(job: Job, text: str) -> None:
    """A line written by the console itself (the reaper), stored and published like the runner's."""
    job.log_seq += 1
    line = JobLogLine.objects.create(job=job, seq=job.log_seq, text=text)
    Job.objects.filter(pk=job.pk).update(log_seq=job.log_seq)
    publish_on_commit(job.stream, [line.as_item()])

"""The job runner: claims a job under a lease, keeps the lease alive, runs the job's handler, and owns
the outcome (succeeded, failed with a cause and a next step, or cancelled). Handlers only do the work.

Exactly once: a job is claimed by one atomic UPDATE (pending -> running with this runner as lease
owner); every later write checks the owner, so a runner that lost its lease changes nothing. Long work
relies on the lease, not on broker acknowledgements.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F
from django.db.models.functions import Now
from django.utils import timezone

import audit
from audit import context, telemetry
from deployments.jobs.log import JobLog
from deployments.jobs.reaper import lease_host
from deployments.models import Job
from deployments.monitoring import instruments

logger = logging.getLogger(__name__)


class JobFailure(Exception):
    """A failure the user can act on: a short cause code, what happened, and the next step."""

    def __init__(self, message: str, *, cause: str, next_step: str = "") -> None:
        super().__init__(message)
        self.message, self.cause, self.next_step = message, cause, next_step


class JobCancelled(Exception):
    """Raised by handlers when JobContext.should_cancel() said so."""


class Handler:
    """What a job kind does. `run` returns the result; `finished` tidies up after any outcome."""

    def run(self, ctx: JobContext) -> dict:
        raise NotImplementedError

    def finished(self, ctx: JobContext, status: str) -> None:
        """Called after the outcome is known (also for a job cancelled before it started)."""


HANDLERS: dict[str, Handler] = {}


def register(kind: str) -> Callable[[type[Handler]], type[Handler]]:
    def decorate(cls: type[Handler]) -> type[Handler]:
        HANDLERS[kind] = cls()
        return cls

    return decorate


def owner_name() -> str:
    return f"{lease_host()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class JobContext:
    """What a handler sees: the job, a log, progress, and the cancel flag."""

    def __init__(self, job, owner: str) -> None:
        self.job, self.owner = job, owner
        self.log_writer = JobLog(job)
        self.lost = threading.Event()
        self._cancel_checked, self._cancelled = 0.0, False
        self._progress_saved = 0.0
        # The outcome, set before Handler.finished runs (so it can act on the cause).
        self.failure_cause = self.failure_detail = self.failure_next_step = ""

    def log(self, text: str) -> None:
        self.log_writer.write(text)

    def event(self, kind: str, data: dict) -> None:
        self.log_writer.write(kind, stream="event", data=data)

    def progress(self, data: dict, *, force: bool = False) -> None:
        """Record progress as a stream line, and (at most every second) on the job row for the API."""
        self.log_writer.write("", stream="progress", data=data)
        now = time.monotonic()
        if force or now - self._progress_saved >= 1.0:
            self._progress_saved = now
            try:
                Job.objects.filter(pk=self.job.pk, lease_owner=self.owner).update(progress=data)
            except DatabaseError as exc:  # the stream line carries it; the row catches up at the next save
                _database_away(exc)

    def should_cancel(self) -> bool:
        """True once a cancel was requested (the flag is read at most every JOB_CANCEL_POLL_SECONDS), or
        when this runner lost its lease (another attempt owns the job now)."""
        if self.lost.is_set():
            return True
        now = time.monotonic()
        if not self._cancelled and now - self._cancel_checked >= settings.JOB_CANCEL_POLL_SECONDS:
            self._cancel_checked = now
            try:
                self._cancelled = Job.objects.filter(pk=self.job.pk, cancel_requested=True).exists()
            except DatabaseError as exc:  # asked again at the next poll, when the database is back
                _database_away(exc)
        return self._cancelled


def _database_away(exc: DatabaseError) -> None:
    """The database went away (restart, network): outside a transaction, drop this thread's broken connection so
    its next query connects again (Django reconnects only between requests and tasks); inside one, let it fail."""
    if connection.in_atomic_block:
        raise exc
    logger.info("database unavailable, trying again later: %s", exc)
    connection.close()


def _lease_until():
    return Now() + timedelta(seconds=settings.JOB_LEASE_SECONDS)


def claim(job_id: int, owner: str) -> bool:
    """Take a pending job: one atomic UPDATE, so two workers never both run it."""
    return bool(
        Job.objects.filter(pk=job_id, status=Job.Status.PENDING).update(
            status=Job.Status.RUNNING,
            lease_owner=owner,
            lease_expires_at=_lease_until(),
            started_at=Now(),
            attempts=F("attempts") + 1,
        )
    )


class _Heartbeat(threading.Thread):
    def __init__(self, job_id: int, owner: str, lost: threading.Event) -> None:
        super().__init__(name=f"job-{job_id}-lease", daemon=True)
        self.job_id, self.owner, self.lost, self.stopped = job_id, owner, lost, threading.Event()

    def run(self) -> None:
        interval = max(0.2, settings.JOB_LEASE_SECONDS / 3)
        try:
            while not self.stopped.wait(interval):
                try:
                    renewed = Job.objects.filter(
                        pk=self.job_id, lease_owner=self.owner, status=Job.Status.RUNNING
                    ).update(lease_expires_at=_lease_until())
                except DatabaseError as exc:  # a database restart must not end the renewals: try at the next tick
                    _database_away(exc)
                    continue
                if not renewed:
                    self.lost.set()
                    return
        finally:
            connection.close()


def run(job_id: int, *, owner: str | None = None) -> str:
    """Run one job if it can be claimed; returns the outcome ("skipped" when someone else has it). It runs in a span
    `job <kind>` in the trace of the request or task that created the job (Job.traceparent)."""
    job = Job.objects.filter(pk=job_id).only("kind", "traceparent").first()
    if job is None:
        return "skipped"
    attributes = {"llmdeploy.job.id": job_id, "llmdeploy.job.kind": job.kind}
    with telemetry.span_in_trace(f"job {job.kind}", job.traceparent, attributes=attributes) as span:
        outcome = _run(job_id, owner=owner)
        span.set_attribute("llmdeploy.job.outcome", outcome)
        if outcome == Job.Status.FAILED:
            telemetry.mark_failed(span, "the job failed")
        return outcome


def _run(job_id: int, *, owner: str | None = None) -> str:
    owner = owner or owner_name()
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return "skipped"
    if job.status == Job.Status.PENDING and job.cancel_requested:
        # Leased like any claim: a worker that dies in the clean-up (Handler.finished stops servers) leaves a job
        # the reaper can end; without an expiry it stayed running for ever.
        if Job.objects.filter(pk=job_id, status=Job.Status.PENDING).update(
            status=Job.Status.RUNNING, lease_owner=owner, lease_expires_at=_lease_until()
        ):
            job.refresh_from_db()
            ctx = JobContext(job, owner)
            _finish(ctx, Job.Status.CANCELLED, detail="Cancelled before it started.")
            return Job.Status.CANCELLED
        return "skipped"
    if not claim(job_id, owner):
        return "skipped"
    job.refresh_from_db()
    ctx = JobContext(job, owner)
    heartbeat = _Heartbeat(job_id, owner, ctx.lost)
    heartbeat.start()
    ctx.log_writer.start()  # lines reach the stream within the flush interval whatever the handler does next
    token = context.set_context(
        context.AuditContext(
            **{
                **context.current().as_headers(),
                "source": "worker",
                "request_id": job.request_id,
                "initiator_id": job.actor_id,
                "initiator_name": job.actor.get_username() if job.actor else "",
            }
        )
    )
    try:
        ctx.log(f"attempt {job.attempts} of {job.max_attempts} on {owner}")
        handler = HANDLERS[job.kind]
        try:
            result = handler.run(ctx)
        except JobCancelled:
            status, detail, cause, next_step, result = Job.Status.CANCELLED, "Cancelled on request.", "", "", {}
        except JobFailure as failure:
            status, detail, cause, next_step, result = (
                Job.Status.FAILED,
                failure.message,
                failure.cause,
                failure.next_step,
                {},
            )
        except Exception as exc:
            ctx.log(traceback.format_exc())
            status, detail, cause, next_step, result = (
                Job.Status.FAILED,
                f"{type(exc).__name__}: {exc}",
                "error",
                "See the job's log; report it if it looks like a bug.",
                {},
            )
        else:
            status, detail, cause, next_step = Job.Status.SUCCEEDED, "", "", ""
        # The heartbeat notices a lost lease only at its next renewal: ask the database before acting on the
        # outcome (Handler.finished stops servers, frees GPUs), so a runner that lost the job changes nothing.
        if (
            ctx.lost.is_set()
            or not Job.objects.filter(pk=job_id, lease_owner=owner, status=Job.Status.RUNNING).exists()
        ):
            ctx.log("lease lost: another attempt owns this job now; stopping without writing an outcome")
            ctx.log_writer.flush()
            return "lost"
        _finish(ctx, status, result=result, detail=detail, cause=cause, next_step=next_step)
        return status
    finally:
        heartbeat.stopped.set()
        ctx.log_writer.stop()
        context.reset_context(token)


def _finish(
    ctx: JobContext, status: str, *, result: dict | None = None, detail: str = "", cause: str = "", next_step: str = ""
) -> None:
    if status == Job.Status.FAILED:
        ctx.log(f"failed: {detail}" + (f" — next step: {next_step}" if next_step else ""))
    else:
        ctx.log(status)
    ctx.job.refresh_from_db(fields=["cancel_requested", "cancel_delete_partial"])  # set while it ran
    ctx.failure_cause, ctx.failure_detail, ctx.failure_next_step = cause, detail, next_step
    try:
        HANDLERS[ctx.job.kind].finished(ctx, status)
    except Exception:
        ctx.log("clean-up after the job failed:\n" + traceback.format_exc())
    ctx.log_writer.flush()
    with transaction.atomic():
        updated = Job.objects.filter(pk=ctx.job.pk, lease_owner=ctx.owner, status=Job.Status.RUNNING).update(
            status=status,
            result=result or {},
            failure_detail=detail[:5000],
            failure_cause=cause[:60],
            next_step=next_step[:300],
            finished_at=Now(),
            lease_expires_at=None,
        )
        if updated:
            ctx.log_writer.end_on_commit()
            started = ctx.job.started_at
            instruments.job_finished(ctx.job.kind, status, (timezone.now() - started).total_seconds() if started else 0)
            audit.record(
                action=f"job.{status}",
                actor=None,
                actor_name=f"worker:{socket.gethostname()}",
                target=ctx.job,
                # A cancellation is always asked for (a user's stop): the stop succeeded, nothing failed.
                outcome="failure" if status == Job.Status.FAILED else "success",
                detail={"kind": ctx.job.kind, "cause": cause, "attempts": ctx.job.attempts},
            )

"""The reaper: no job stays running after its worker died, and no pending job is lost with Redis's queue."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils.translation import gettext as _

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


def lease_host() -> str:
    """What a runner's lease owner starts with: the agent's host name where it has one (a recreated agent container
    gets a new hostname but keeps AGENT_HOST_NAME, and its start-up sweep must still find its jobs), else this
    machine's hostname."""
    return (settings.AGENT_HOST_NAME or socket.gethostname()).replace(":", "-")


def jobs_orphaned_by_restart() -> list[int]:
    """At worker start (the worker or its host restarted): running jobs this host's dead worker processes held are
    marked lost, the reason in their log, and their lease ends now, so the reaper retries them at once instead of
    after a lease. A process counts as dead when no process has its pid, or the one that has it started after the
    job was claimed (a rebooted host's or restarted container's fresh processes get the same low pids)."""
    host = lease_host()
    lost = []
    for job in Job.objects.filter(status=Job.Status.RUNNING, lease_owner__startswith=f"{host}:"):
        pid = int(job.lease_owner.split(":")[1])
        if _owner_alive(pid, job.started_at):
            continue
        with transaction.atomic():
            held = Job.objects.select_for_update().filter(pk=job.pk, lease_owner=job.lease_owner, status=job.status)
            job = held.first()
            if job is None:
                continue  # finished or handed on meanwhile
            job_log_line(
                job,
                _("lost: the process %(owner)s that ran this job is gone (its worker or the host restarted)")
                % {"owner": job.lease_owner},
            )
            held.update(lease_expires_at=Now())
            lost.append(job.pk)
    return lost


# The claim's time comes from the database's clock, a process's start from this host's: allow them to differ this
# much before a process that started "after" the claim is taken for another one (erring towards alive: a live job
# swept by mistake would be stopped; a dead one missed is still retried by the reaper after its lease).
CLOCK_SLACK_S = 5.0


def _owner_alive(pid: int, claimed_at) -> bool:
    if not _alive(pid):
        return False
    started = _process_started(pid)
    return started is None or claimed_at is None or started <= claimed_at.timestamp() + CLOCK_SLACK_S


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed worker's child that nobody has reaped yet (a zombie) still answers kill(0), but it is gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def _process_started(pid: int) -> float | None:
    """When process `pid` started (epoch seconds), from /proc; None where there is no /proc (then pid alone counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
    except (OSError, StopIteration):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime; the fields after "(comm)" begin at 3
    return float(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")

"""The fleet at a glance (the admins' dashboard): hosts and their heartbeats, GPUs with their memory and load,
GPU health, deployments by state, jobs running, and what failed lately. Everything through what the reader may
view (console.permissions.restrict on `view`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, OuterRef, Prefetch, Subquery, Sum
from django.urls import reverse
from django.utils import timezone
from django.utils.text import capfirst
from django.utils.translation import gettext as _

from console import roles
from console.permissions import restrict
from deployments.models import Deployment, Gpu, Host, Job
from deployments.monitoring.models import GpuSample

RECENT_FAILURES = timedelta(days=7)
FAILURES_SHOWN = 10
# A reading older than this is not shown as the GPU's load now (the agent stopped reporting).
STALE_READING = timedelta(minutes=10)


@dataclass
class GpuRow:
    gpu: Gpu
    memory_total: int
    memory_used: int | None
    utilization: float | None
    reserved: int
    read_at: datetime | None

    @property
    def used_percent(self) -> float | None:
        return round(100 * self.memory_used / self.memory_total, 1) if self.memory_used and self.memory_total else None

    @property
    def reserved_percent(self) -> float:
        return round(100 * self.reserved / self.memory_total, 1) if self.memory_total else 0.0


@dataclass
class HostRow:
    host: Host
    online: bool
    heartbeat_age: float | None  # seconds
    gpus: list[GpuRow] = field(default_factory=list)

    @property
    def heartbeat_text(self) -> str:
        return age_text(self.heartbeat_age)


def age_text(seconds: float | None) -> str:
    """An age as "12 s", "4 min 10 s", "3 h 05 min" or "2 d 04 h" (the units job.js and the jobs page use)."""
    if seconds is None:
        return ""
    seconds = max(0, int(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400} d {seconds % 86400 // 3600:02d} h"
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


@dataclass
class Failure:
    kind: str  # "job" | "deployment"
    name: str
    cause: str
    detail: str
    at: datetime | None
    url: str


@dataclass
class Fleet:
    hosts: list[HostRow]
    health: list[tuple[str, str, int]]  # (state, label, count) for every state, in the model's order
    deployments: list[tuple[str, str, int]]  # (state, label, count), states with deployments only
    jobs_running: int
    jobs_pending: int
    failures: list[Failure]

    @property
    def gpus(self) -> list[GpuRow]:
        return [row for host in self.hosts for row in host.gpus]

    @property
    def hosts_online(self) -> int:
        return sum(1 for host in self.hosts if host.online)


def _latest(field_name: str):
    return Subquery(GpuSample.objects.filter(gpu=OuterRef("pk")).order_by("-at").values(field_name)[:1])


def _gpu_row(gpu: Gpu, now: datetime) -> GpuRow:
    """The GPU's last reading: the agent's telemetry when fresh, else its newest sample when fresh."""
    telemetry = gpu.telemetry if isinstance(gpu.telemetry, dict) else {}
    used, busy, read_at = None, None, None
    if gpu.telemetry_at and now - gpu.telemetry_at <= STALE_READING and telemetry:
        used, busy, read_at = telemetry.get("memory_used"), telemetry.get("utilization"), gpu.telemetry_at
    elif gpu.sample_at and now - gpu.sample_at <= STALE_READING:
        used, busy, read_at = gpu.sample_memory_used, gpu.sample_utilization, gpu.sample_at
    total = (telemetry.get("memory_total") if read_at == gpu.telemetry_at else None) or gpu.memory_total
    return GpuRow(
        gpu=gpu,
        memory_total=int(total),
        memory_used=int(used) if isinstance(used, int | float) else None,
        utilization=float(busy) if isinstance(busy, int | float) else None,
        reserved=int(gpu.reserved or 0),
        read_at=read_at,
    )


def visible_gpus(user) -> list[Gpu]:
    hosts = restrict(Host.objects.all(), user, roles.VIEW)
    return list(Gpu.objects.filter(host__in=hosts))


def fleet_overview(user, *, now: datetime | None = None) -> Fleet:
    now = now or timezone.now()
    gpus = Gpu.objects.annotate(
        reserved=Sum("reservations__memory_bytes"),
        sample_at=_latest("at"),
        sample_utilization=_latest("utilization"),
        sample_memory_used=_latest("memory_used"),
    ).order_by("index")
    hosts = restrict(Host.objects.all(), user, roles.VIEW).order_by("name").prefetch_related(Prefetch("gpus", gpus))
    rows = []
    for host in hosts:
        age = (now - host.last_heartbeat).total_seconds() if host.last_heartbeat else None
        row = HostRow(host=host, online=host.status == Host.Status.ONLINE, heartbeat_age=age)
        row.gpus = [_gpu_row(gpu, now) for gpu in host.gpus.all()]
        rows.append(row)
    counts = {state: 0 for state in Gpu.Health.values}
    for row in rows:
        for gpu_row in row.gpus:
            counts[gpu_row.gpu.health] = counts.get(gpu_row.gpu.health, 0) + 1
    health = [(state, label, counts[state]) for state, label in Gpu.Health.choices]
    deployments = restrict(Deployment.objects.all(), user, roles.VIEW)
    by_state = dict(deployments.values_list("state").annotate(n=Count("pk")).values_list("state", "n"))
    states = [(state, label, by_state[state]) for state, label in Deployment.State.choices if by_state.get(state)]
    jobs = restrict(Job.objects.all(), user, roles.VIEW)
    return Fleet(
        hosts=rows,
        health=health,
        deployments=states,
        jobs_running=jobs.filter(status=Job.Status.RUNNING).count(),
        jobs_pending=jobs.filter(status=Job.Status.PENDING).count(),
        failures=recent_failures(jobs, deployments, since=now - RECENT_FAILURES),
    )


def recent_failures(jobs, deployments, *, since: datetime) -> list[Failure]:
    """Failed jobs and deployments of the last week, newest first, each with its cause and a link to it."""
    failures = [
        Failure(
            kind="job",
            name=f"{capfirst(job.get_kind_display())} · {_('job %(id)s') % {'id': job.pk}}",  # as the job page heads it
            cause=job.failure_cause,
            detail=job.failure_detail,
            at=job.finished_at,
            url=reverse("job-detail", args=[job.pk]),
        )
        for job in jobs.filter(status=Job.Status.FAILED, finished_at__gte=since).order_by("-finished_at")[
            :FAILURES_SHOWN
        ]
    ]
    failures += [
        Failure(
            kind="deployment",
            name=deployment.name,
            cause=deployment.failure_cause,
            detail=deployment.failure_detail,
            at=deployment.state_changed_at,
            url=reverse("deployment-detail", args=[deployment.pk]),
        )
        for deployment in deployments.filter(state=Deployment.State.FAILED, state_changed_at__gte=since).order_by(
            "-state_changed_at"
        )[:FAILURES_SHOWN]
    ]
    failures.sort(key=lambda failure: failure.at or since, reverse=True)
    return failures[:FAILURES_SHOWN]

"""What the console's /metrics says: the fleet as the database holds it at scrape time, the Celery queues' depth,
and the counters other processes wrote (deployments/monitoring/instruments.py, summed across processes).

Database families come from a handful of aggregate queries (one per table, GROUP BY where the family counts rows)
and are written straight into Prometheus' text format (0.0.4): at 1,000 deployments and 8,000 GPUs a scrape builds
~60,000 samples, and prometheus_client's own objects per sample would cost more than the queries
(bench/bench_metrics.py measures it against generate_latest of the same series).
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis
from django.conf import settings
from django.db.models import Count, IntegerField, Max, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from prometheus_client import CollectorRegistry, generate_latest, multiprocess

from audit.models import AuditCheckpoint, AuditEvent
from audit.verify import last_verification
from deployments.models import Deployment, DeploymentSpec, Gpu, GpuReservation, Host, Job, ModelArtifact
from deployments.monitoring.models import HealthCheckRun

logger = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
GPU_STATES = {  # Gpu.Health value -> the state label (the contract's words)
    Gpu.Health.OK: "healthy",
    Gpu.Health.DEGRADED: "degraded",
    Gpu.Health.FAILED: "failed",
    Gpu.Health.MISSING: "missing",
    Gpu.Health.UNKNOWN: "unknown",
}
SEVERITIES = ("critical", "warning", "info")


@dataclass
class Family:
    """One metric family: its samples as (label values, value), in the order of `labels`."""

    name: str
    kind: str  # gauge | counter
    help: str
    labels: tuple[str, ...] = ()
    samples: list[tuple[tuple, float]] = field(default_factory=list)

    def add(self, value: float, *label_values) -> None:
        self.samples.append((label_values, value))


def _escape(value) -> str:
    text = str(value)
    if "\\" in text or '"' in text or "\n" in text:
        text = text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return text


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def render(families: Iterable[Family]) -> str:
    """The families in Prometheus' text exposition format 0.0.4."""
    out: list[str] = []
    for family in families:
        out.append(f"# HELP {family.name} {family.help}\n# TYPE {family.name} {family.kind}\n")
        if not family.labels:
            out.extend(f"{family.name} {_number(value)}\n" for _, value in family.samples)
            continue
        # One format string per family: the label names are written once, only the values vary per sample.
        template = family.name + "{" + ",".join(f'{label}="%s"' for label in family.labels) + "} %s\n"
        for values, value in family.samples:
            out.append(template % (*map(_escape, values), _number(value)))
    return "".join(out)


# -- the families, one query (or two) each ---------------------------------------------------------------------------


def job_families() -> list[Family]:
    jobs = Family("llmdeploy_jobs", "gauge", "Jobs by kind and status.", ("kind", "status"))
    failed_downloads = 0
    for kind, status, count in Job.objects.order_by().values_list("kind", "status").annotate(n=Count("id")):
        jobs.add(count, kind, status)
        if kind == Job.Kind.DOWNLOAD and status == Job.Status.FAILED:
            failed_downloads = count
    failures = Family("llmdeploy_download_failures_total", "counter", "Download jobs that failed.")
    failures.add(failed_downloads)
    return [jobs, failures]


def launch_families() -> list[Family]:
    """Launches are serve jobs (one per start of a server), their backend the spec the job started."""
    rows = list(
        Job.objects.filter(kind=Job.Kind.SERVE)
        .order_by()
        .annotate(spec_pk=Cast(KT("params__spec"), IntegerField()))
        .values_list("spec_pk", "status", "failure_cause")
        .annotate(n=Count("id"))
    )
    backends = dict(DeploymentSpec.objects.filter(pk__in={row[0] for row in rows}).values_list("pk", "backend"))
    launches: Counter = Counter()
    failures: Counter = Counter()
    for spec_pk, status, cause, count in rows:
        backend = backends.get(spec_pk, "")
        launches[backend] += count
        if status == Job.Status.FAILED:
            failures[backend, cause or "error"] += count
    launched = Family("llmdeploy_launches_total", "counter", "Server starts (serve jobs) by backend.", ("backend",))
    for backend, count in sorted(launches.items()):
        launched.add(count, backend)
    failed = Family(
        "llmdeploy_launch_failures_total", "counter", "Servers that failed, by backend and cause.", ("backend", "cause")
    )
    for (backend, cause), count in sorted(failures.items()):
        failed.add(count, backend, cause)
    return [launched, failed]


def deployment_families() -> list[Family]:
    rows = Deployment.objects.order_by().values_list(
        "name", "state", "spec__backend", "host__name", "restart_count", "flags"
    )
    states = Family("llmdeploy_deployments", "gauge", "Deployments by state and backend.", ("state", "backend"))
    up = Family(
        "llmdeploy_deployment_up", "gauge", "1 while the deployment runs, else 0.", ("deployment", "backend", "host")
    )
    restarts = Family(
        "llmdeploy_deployment_restarts_total", "counter", "Automatic restarts after failures.", ("deployment",)
    )
    flags = Family(
        "llmdeploy_deployment_flags",
        "gauge",
        "Open flags (a failed GPU, corrupt files) by cause.",
        ("deployment", "cause"),
    )
    by_state: Counter = Counter()
    running = Deployment.State.RUNNING
    for name, state, backend, host, restart_count, flag_list in rows:
        backend = backend or ""
        by_state[state, backend] += 1
        up.add(1 if state == running else 0, name, backend, host or "")
        restarts.add(restart_count, name)
        if flag_list:
            for cause, count in Counter(flag.get("cause", "") for flag in flag_list).items():
                flags.add(count, name, cause)
    for (state, backend), count in sorted(by_state.items()):
        states.add(count, state, backend)
    return [states, up, restarts, flags]


def audit_families(now: float) -> list[Family]:
    events = Family("llmdeploy_audit_events_total", "counter", "Events in the audit chain.")
    # The chain numbers its events 1..N without gaps (verify checks it): the head's id is the count, from an index.
    events.add(AuditEvent.objects.aggregate(head=Max("id"))["head"] or 0)
    families = [events]
    last = AuditCheckpoint.objects.order_by("-id").values_list("created_us", flat=True).first()
    if last is not None:
        age = Family("llmdeploy_audit_checkpoint_age_seconds", "gauge", "Seconds since the last signed checkpoint.")
        age.add(max(0.0, now - last / 1e6))
        families.append(age)
    try:
        verification = last_verification()
    except redis.RedisError:  # kept in the cache (Redis): without it, the family is left out
        logger.warning("metrics: Redis did not answer the last audit verification", exc_info=True)
        verification = None
    if verification is not None:
        ok = Family(
            "llmdeploy_audit_verification_ok",
            "gauge",
            "1 when the last verification the console ran found the chain intact.",
        )
        ok.add(1 if verification["ok"] else 0)
        families.append(ok)
    return families


def host_families(now: float) -> list[Family]:
    age = Family(
        "llmdeploy_host_heartbeat_age_seconds", "gauge", "Seconds since the host's agent last reported.", ("host",)
    )
    up = Family("llmdeploy_host_up", "gauge", "1 while the host's agent reports (online), else 0.", ("host",))
    online = Host.Status.ONLINE
    for name, status, heartbeat in Host.objects.order_by().values_list("name", "status", "last_heartbeat"):
        if heartbeat is not None:
            age.add(max(0.0, now - heartbeat.timestamp()), name)
        up.add(1 if status == online else 0, name)
    return [age, up]


def gpu_families() -> list[Family]:
    health = Family(
        "llmdeploy_gpu_health",
        "gauge",
        "1 for the GPU's current health state, 0 for the others.",
        ("host", "gpu", "state"),
    )
    memory = Family("llmdeploy_inventory_gpu_memory_bytes", "gauge", "The GPU's memory.", ("host", "gpu"))
    reserved = Family(
        "llmdeploy_inventory_gpu_reserved_bytes",
        "gauge",
        "GPU memory promised to deployments and jobs.",
        ("host", "gpu"),
    )
    held = dict(GpuReservation.objects.order_by().values_list("gpu_id").annotate(total=Sum("memory_bytes")))
    states = tuple(GPU_STATES.items())
    rows = Gpu.objects.order_by().values_list("pk", "host__name", "index", "health", "memory_total")
    for pk, host, index, state, memory_total in rows:
        gpu = str(index)
        for value, label in states:
            health.samples.append(((host, gpu, label), 1 if state == value else 0))
        memory.samples.append(((host, gpu), memory_total))
        reserved.samples.append(((host, gpu), held.get(pk, 0)))
    return [health, memory, reserved]


def health_check_families() -> list[Family]:
    corrupt = Family(
        "llmdeploy_integrity_corrupt_artifacts", "gauge", "Model files found corrupt by the integrity sweep."
    )
    corrupt.add(ModelArtifact.objects.filter(status=ModelArtifact.Status.CORRUPT).count())
    families = [corrupt]
    last = (
        HealthCheckRun.objects.filter(state=HealthCheckRun.State.DONE, finished_at__isnull=False)
        .order_by("-finished_at")
        .values_list("findings", "finished_at")
        .first()
    )
    if last is not None:
        findings, finished_at = last
        counts = Counter(finding.get("severity", "info") for finding in findings or [])
        by_severity = Family(
            "llmdeploy_healthcheck_findings", "gauge", "Findings of the last finished health check.", ("severity",)
        )
        for severity in sorted(set(SEVERITIES) | set(counts)):
            by_severity.add(counts.get(severity, 0), severity)
        when = Family(
            "llmdeploy_healthcheck_last_run_timestamp_seconds", "gauge", "When the last health check finished."
        )
        when.add(finished_at.timestamp())
        families += [by_severity, when]
    return families


_redis_clients: dict[str, redis.Redis] = {}


def queue_family() -> Family:
    """The Celery queues' backlog: LLEN of the console's queue and of every host's."""
    depth = Family("llmdeploy_job_queue_depth", "gauge", "Tasks waiting in each Celery queue.", ("queue",))
    queues = ["celery", settings.CONSOLE_QUEUE]
    queues += [f"host.{name}" for name in Host.objects.order_by("name").values_list("name", flat=True)]
    queues = list(dict.fromkeys(queues))
    client = _redis_clients.get(settings.REDIS_URL)
    if client is None:
        client = _redis_clients[settings.REDIS_URL] = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    pipeline = client.pipeline(transaction=False)
    for queue in queues:
        pipeline.llen(queue)
    try:
        lengths = pipeline.execute()
    except redis.RedisError:  # the rest of the scrape still answers; the family stays empty
        logger.warning("metrics: Redis did not answer the queue lengths", exc_info=True)
        return depth
    for queue, length in zip(queues, lengths, strict=True):
        depth.add(int(length), queue)
    return depth


def database_families(now: float | None = None) -> list[Family]:
    """Every family read from the database and Redis at scrape time."""
    now = time.time() if now is None else now
    return [
        *job_families(),
        queue_family(),
        *deployment_families(),
        *launch_families(),
        *audit_families(now),
        *host_families(now),
        *gpu_families(),
        *health_check_families(),
    ]


def multiprocess_text() -> str:
    """The counters and histograms every process wrote (gateway calls, job durations, downloaded bytes), summed."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
    return generate_latest(registry).decode()


def exposition() -> str:
    """The whole of /metrics."""
    return render(database_families()) + multiprocess_text()

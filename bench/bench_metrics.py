"""The console's /metrics scrape at 1,000 deployments and 8,000 GPUs (goal: <= 2x prometheus-client).

The scrape (GET /metrics through Django: the aggregate queries, Redis LLENs, the text) is timed against
prometheus_client's generate_latest of the very same series (names, labels, values) pre-filled in a private
registry, in the same process: the cost of reading the fleet at scrape time over the cost of only writing it out.
The multiprocess part reads an empty directory here (the families it would add are the same in both)."""

from __future__ import annotations

import random
import tempfile
import time
from datetime import timedelta

from bench.common import Figure, median

HOSTS, GPUS_PER_HOST, DEPLOYMENTS, ROUNDS = 1_000, 8, 1_000, 15


def seed_fleet(hosts: int = HOSTS, gpus_per_host: int = GPUS_PER_HOST, deployments: int = DEPLOYMENTS) -> None:
    """Bulk-created rows: hosts with GPUs (health, reservations), deployments with specs, serve jobs, flags, a
    finished health check."""
    from django.utils import timezone

    from deployments.models import (
        Deployment,
        DeploymentSpec,
        Gpu,
        GpuReservation,
        Host,
        Job,
        ModelArtifact,
        ModelRepo,
        ModelSource,
    )
    from deployments.monitoring.models import HealthCheckRun

    rng = random.Random(19)
    now = timezone.now()
    source = ModelSource.objects.create(name="bench-hub")
    repo = ModelRepo.objects.create(source=source, repo_id="org/bench-model", commit="0" * 40)
    statuses = (Host.Status.ONLINE,) * 8 + (Host.Status.OFFLINE, Host.Status.MAINTENANCE)
    host_rows = Host.objects.bulk_create(
        Host(
            name=f"gpu-node-{h:04d}",
            status=rng.choice(statuses),
            last_heartbeat=now - timedelta(seconds=rng.randint(1, 600)),
            metrics_address=f"10.0.{h // 250}.{h % 250}:9835",
        )
        for h in range(hosts)
    )
    artifact = ModelArtifact.objects.create(repo=repo, host=host_rows[0], status=ModelArtifact.Status.READY)
    healths = (Gpu.Health.OK,) * 20 + (Gpu.Health.DEGRADED, Gpu.Health.FAILED, Gpu.Health.UNKNOWN)
    gpus = Gpu.objects.bulk_create(
        Gpu(host=host, index=i, name="NVIDIA H100", memory_total=80 * 10**9, health=rng.choice(healths))
        for host in host_rows
        for i in range(gpus_per_host)
    )
    states = (Deployment.State.RUNNING,) * 6 + (Deployment.State.FAILED, Deployment.State.STOPPED)
    deployment_rows = Deployment.objects.bulk_create(
        Deployment(
            name=f"bench-{d:04d}",
            state=rng.choice(states),
            host=host_rows[d % hosts],
            gpu_indexes=[d % gpus_per_host],
            restart_count=rng.randint(0, 3),
            endpoint=f"http://10.1.0.{d % 250}:{8000 + d}",
            flags=[{"cause": "gpu_failed", "subject": "gpu:0"}] if d % 50 == 0 else [],
        )
        for d in range(deployments)
    )
    specs = DeploymentSpec.objects.bulk_create(
        DeploymentSpec(deployment=deployment, version=1, artifact=artifact, backend=rng.choice(("tgi", "vllm")))
        for deployment in deployment_rows
    )
    for deployment, spec in zip(deployment_rows, specs, strict=True):
        deployment.spec = spec
    Deployment.objects.bulk_update(deployment_rows, ["spec"], batch_size=500)
    GpuReservation.objects.bulk_create(
        GpuReservation(gpu=gpus[(d % hosts) * gpus_per_host + d % gpus_per_host], memory_bytes=60 * 10**9,
                       holder=f"deployment:{deployment.pk}")
        for d, deployment in enumerate(deployment_rows)
    )  # fmt: skip
    causes = ("cuda_oom", "health_deadline", "image_missing")
    Job.objects.bulk_create(
        Job(
            kind=Job.Kind.SERVE,
            status=Job.Status.FAILED if d % 10 == 0 else Job.Status.RUNNING,
            failure_cause=causes[d % 3] if d % 10 == 0 else "",
            params={"deployment": deployment.pk, "spec": spec.pk},
            queue=f"host.{host_rows[d % hosts].name}",
        )
        for d, (deployment, spec) in enumerate(zip(deployment_rows, specs, strict=True))
    )
    HealthCheckRun.objects.create(
        state=HealthCheckRun.State.DONE,
        finished_at=now,
        findings=[{"severity": "warning"}, {"severity": "critical"}, {"severity": "warning"}],
        findings_count=3,
    )


def baseline_registry(families):
    """A private prometheus_client registry holding the same series (plain in-process values, not the
    multiprocess files: those would be written to disk and summed into /metrics)."""
    from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, values

    disable_created_metrics()  # the console's counters have no _created series
    registry = CollectorRegistry()
    previous, values.ValueClass = values.ValueClass, values.MutexValue
    try:
        for family in families:
            if family.kind == "counter":
                metric = Counter(family.name.removesuffix("_total"), family.help, family.labels, registry=registry)
                for label_values, value in family.samples:
                    (metric.labels(*label_values) if family.labels else metric).inc(value)
            else:
                metric = Gauge(family.name, family.help, family.labels, registry=registry)
                for label_values, value in family.samples:
                    (metric.labels(*label_values) if family.labels else metric).set(value)
    finally:
        values.ValueClass = previous
    return registry


def series(text: str) -> set[tuple]:
    """Every sample of an exposition as (name, labels, value)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items())), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _scrape_ratio() -> Figure:
    from django.conf import settings
    from django.db import transaction
    from django.test import Client
    from prometheus_client import generate_latest

    from deployments.monitoring import metrics

    settings.PROMETHEUS_MULTIPROC_DIR = tempfile.mkdtemp(prefix="bench-metrics-")
    with transaction.atomic():
        seed_fleet()
        client = Client(HTTP_HOST="127.0.0.1")
        scrapes, text = [], ""
        for _ in range(ROUNDS):
            start = time.perf_counter()
            response = client.get("/metrics")
            scrapes.append(time.perf_counter() - start)
            assert response.status_code == 200, response.status_code
            text = response.content.decode()
        # The same series, frozen at the last scrape's moment (the ages move on between reads).
        families = metrics.database_families()
        registry = baseline_registry(families)
        baselines = []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            expected = generate_latest(registry).decode()
            baselines.append(time.perf_counter() - start)
        ours, theirs = series(metrics.render(families)), series(expected)
        assert ours == theirs, f"{len(ours ^ theirs)} series differ"
        count = len(series(text))
        transaction.set_rollback(True)
    scrape_ms, baseline_ms = median(scrapes) * 1000, median(baselines) * 1000
    return Figure(
        "metrics_scrape_over_prometheus_client",
        scrape_ms / baseline_ms,
        "x",
        "<=",
        2,
        f"GET /metrics {scrape_ms:.0f} ms (queries included) vs generate_latest {baseline_ms:.0f} ms, median of "
        f"{ROUNDS}; {count} series, {DEPLOYMENTS} deployments, {HOSTS * GPUS_PER_HOST} GPUs",
    )


def run() -> list[Figure]:
    return [_scrape_ratio()]

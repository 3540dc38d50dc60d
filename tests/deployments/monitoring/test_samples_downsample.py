"""Downsampling and retention of the console's samples: minute rows past TELEMETRY_MINUTE_DAYS become 15-minute rows
(weighted means, OR-ed bits, last counters; deployment counts summed), 15-minute rows past TELEMETRY_QUARTER_DAYS go;
set-based, so a fleet's worth costs a handful of queries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from deployments.models import DeploymentSample, Gpu, GpuSample
from deployments.monitoring.samples import downsample_samples, gpu_series
from tests.factories.inventory import GpuFactory, HostFactory
from tests.factories.serving import DeploymentFactory

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 12, 10, 12, 7, tzinfo=UTC)
OLD = datetime(2026, 12, 9, 10, 0, tzinfo=UTC)  # a quarter starting more than a day before NOW


def minute(gpu: Gpu, at: datetime, **fields) -> GpuSample:
    return GpuSample(gpu=gpu, at=at, resolution=60, **fields)


def test_old_minutes_fold_into_quarters_and_recent_ones_stay(settings):
    settings.TELEMETRY_MINUTE_DAYS, settings.TELEMETRY_QUARTER_DAYS = 1, 31
    gpu = GpuFactory()
    GpuSample.objects.bulk_create(
        [
            minute(gpu, OLD, readings=2, utilization=10.0, temperature=50.0, throttle_reasons=0x20, ecc_corrected=1),
            minute(gpu, OLD + timedelta(minutes=1), readings=1, utilization=40.0, temperature=None, xid=94),
            minute(
                gpu, OLD + timedelta(minutes=14), readings=1, utilization=70.0, throttle_reasons=0x4, ecc_corrected=5
            ),
            minute(gpu, OLD + timedelta(minutes=15), readings=1, utilization=0.0, remapped_rows_pending=True),
            minute(gpu, NOW - timedelta(hours=1), readings=2, utilization=99.0),  # within the day: kept as is
        ]
    )
    deployment = DeploymentFactory()
    DeploymentSample.objects.bulk_create(
        [
            DeploymentSample(
                deployment=deployment, at=OLD, requests=10, errors=1, latency_p50_ms=100, latency_p95_ms=300
            ),
            DeploymentSample(
                deployment=deployment, at=OLD + timedelta(minutes=5), requests=5, latency_p50_ms=200, latency_p95_ms=900
            ),
        ]
    )
    result = downsample_samples(now=NOW)
    assert result["gpu_minutes_folded"] == 4 and result["deployment_minutes_folded"] == 2

    first, second = GpuSample.objects.filter(gpu=gpu, resolution=900).order_by("at")
    assert first.at == OLD and first.readings == 4
    assert first.utilization == pytest.approx((10 * 2 + 40 + 70) / 4)  # weighted by readings
    assert first.temperature == pytest.approx(50.0)  # a missing gauge is left out, not read as 0
    assert first.throttle_reasons == 0x24 and first.ecc_corrected == 5 and first.xid == 94
    assert (second.at, second.readings, second.remapped_rows_pending) == (OLD + timedelta(minutes=15), 1, True)
    assert list(GpuSample.objects.filter(resolution=60).values_list("utilization", flat=True)) == [99.0]

    [quarter] = DeploymentSample.objects.filter(resolution=900)
    assert (quarter.requests, quarter.errors) == (15, 1)
    assert quarter.latency_p50_ms == pytest.approx(150) and quarter.latency_p95_ms == 900  # the worst minute's p95
    assert not DeploymentSample.objects.filter(resolution=60).exists()

    # Running again changes nothing; a late minute row for a folded quarter merges into it.
    assert downsample_samples(now=NOW)["gpu_minutes_folded"] == 0
    GpuSample.objects.create(gpu=gpu, at=OLD + timedelta(minutes=2), resolution=60, readings=4, utilization=10.0)
    downsample_samples(now=NOW)
    first.refresh_from_db()
    assert first.readings == 8 and first.utilization == pytest.approx((130 + 40) / 8)


def test_quarters_past_the_retention_are_deleted(settings):
    settings.TELEMETRY_QUARTER_DAYS = 31
    gpu, deployment = GpuFactory(), DeploymentFactory()
    expired, kept = NOW - timedelta(days=31, minutes=15), NOW - timedelta(days=30)
    for at in (expired, kept):
        GpuSample.objects.create(gpu=gpu, at=at, resolution=900)
        DeploymentSample.objects.create(deployment=deployment, at=at, resolution=900)
    result = downsample_samples(now=NOW)
    assert result["gpu_quarters_deleted"] == 1 and result["deployment_quarters_deleted"] == 1
    assert list(GpuSample.objects.values_list("at", flat=True)) == [kept]
    assert list(DeploymentSample.objects.values_list("at", flat=True)) == [kept]


def test_a_fleet_folds_in_a_few_queries(settings, django_assert_max_num_queries):
    settings.TELEMETRY_MINUTE_DAYS = 1
    host = HostFactory()
    gpus = Gpu.objects.bulk_create(Gpu(host=host, index=i, name="G", memory_total=1) for i in range(200))
    GpuSample.objects.bulk_create(
        minute(gpu, OLD + timedelta(minutes=m), utilization=float(m)) for gpu in gpus for m in range(30)
    )
    with django_assert_max_num_queries(20):
        result = downsample_samples(now=NOW)
    assert result["gpu_minutes_folded"] == 6000
    assert GpuSample.objects.filter(resolution=900).count() == 400 and not GpuSample.objects.filter(resolution=60)


def test_a_series_reads_the_finest_rows_kept(settings):
    settings.TELEMETRY_MINUTE_DAYS = 1
    gpu = GpuFactory()
    from django.utils import timezone

    now = timezone.now()
    recent, old = now - timedelta(minutes=5), now - timedelta(days=3)
    GpuSample.objects.create(gpu=gpu, at=recent.replace(second=0, microsecond=0), resolution=60)
    GpuSample.objects.create(gpu=gpu, at=old.replace(minute=0, second=0, microsecond=0), resolution=900)
    assert [s.resolution for s in gpu_series(gpu, since=now - timedelta(hours=1))] == [60]
    assert [s.resolution for s in gpu_series(gpu, since=now - timedelta(days=7))] == [900, 60]


def test_beat_runs_the_downsampling(settings):
    from workers.tasks import telemetry_downsample

    entry = settings.CELERY_BEAT_SCHEDULE["telemetry-downsample"]
    assert entry == {"task": "workers.telemetry_downsample", "schedule": settings.TELEMETRY_DOWNSAMPLE_SECONDS}
    assert telemetry_downsample.name == "workers.telemetry_downsample"
    GpuSample.objects.create(gpu=GpuFactory(), at=OLD.replace(year=2020), resolution=60)  # long past both windows
    result = telemetry_downsample()
    assert result["gpu_minutes_folded"] == 1 and result["gpu_quarters_deleted"] == 1
    assert not GpuSample.objects.exists()

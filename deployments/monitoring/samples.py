"""The console's own telemetry samples: each GPU reading merged into its GPU's 1-minute row (one upsert per GPU per
heartbeat), and the beat's downsampling: 1-minute rows (GPU and deployment) older than TELEMETRY_MINUTE_DAYS become
15-minute rows, 15-minute rows older than TELEMETRY_QUARTER_DAYS are deleted. Set-based SQL throughout: a fleet of
8,000 GPUs writes 11.5 million minute rows a day.

Charts read `gpu_series(gpu, since=, until=)` and `deployment_series(deployment, since=, until=)`: the finest rows kept
for the span, oldest first.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from deployments.monitoring.models import MINUTE, QUARTER, DeploymentSample, GpuSample

GAUGES = ("utilization", "memory_used", "memory_total", "temperature", "power_w", "power_limit_w")
GAUGES += ("sm_clock_mhz", "memory_clock_mhz")
# Downsampling works through the minute rows a slice of time at a time: bounded transactions after an outage.
SLICE = timedelta(hours=6)


def minute_of(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


def quarter_of(at: datetime) -> datetime:
    return at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)


def _integer(value) -> int | None:
    return int(value) if value is not None else None


def record_gpu_reading(gpu_id: int, reading: dict, *, at: datetime) -> None:
    """Merge one reading (workers.nvml.GpuTelemetry as a dict) into the GPU's row of that minute: gauges as the
    running mean, throttle reasons OR-ed, pending flags kept once set, counters and the XID the latest."""
    xids = reading.get("xids") or ()
    row = {
        **{gauge: reading.get(gauge) for gauge in GAUGES},
        "memory_used": _integer(reading.get("memory_used")),
        "memory_total": _integer(reading.get("memory_total")),
        "throttle_reasons": int(reading.get("throttle_reasons") or 0),
        "ecc_corrected": _integer(reading.get("ecc_corrected")),
        "ecc_uncorrected": _integer(reading.get("ecc_uncorrected")),
        "retired_pages_pending": bool(reading.get("retired_pages_pending")),
        "remapped_rows_pending": bool(reading.get("remapped_rows_pending")),
        "xid": int(xids[-1]) if xids else None,
    }
    table = GpuSample._meta.db_table
    columns = ["gpu_id", "at", "resolution", "readings", *row]
    mean = ", ".join(
        f"{g} = CASE WHEN EXCLUDED.{g} IS NULL THEN s.{g} WHEN s.{g} IS NULL THEN EXCLUDED.{g} "
        f"ELSE (s.{g} * s.readings + EXCLUDED.{g}) / (s.readings + 1) END"
        for g in GAUGES
    )
    # Table and columns are this module's constants; values go as parameters.
    sql = (
        f"INSERT INTO {table} AS s ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "  # noqa: S608
        "ON CONFLICT (gpu_id, resolution, at) DO UPDATE SET readings = s.readings + 1, "
        f"{mean}, throttle_reasons = s.throttle_reasons | EXCLUDED.throttle_reasons, "
        "ecc_corrected = COALESCE(EXCLUDED.ecc_corrected, s.ecc_corrected), "
        "ecc_uncorrected = COALESCE(EXCLUDED.ecc_uncorrected, s.ecc_uncorrected), "
        "retired_pages_pending = s.retired_pages_pending OR EXCLUDED.retired_pages_pending, "
        "remapped_rows_pending = s.remapped_rows_pending OR EXCLUDED.remapped_rows_pending, "
        "xid = COALESCE(EXCLUDED.xid, s.xid)"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [gpu_id, minute_of(at), MINUTE, 1, *row.values()])


# 15-minute rows from minute rows: SELECT expressions per column, and how a row already there (a late minute row)
# takes them in. Gauges are means weighted by readings; percentiles cannot be recomputed from minutes, so p50s are
# averaged and p95 keeps the worst minute.
_BUCKET = "to_timestamp(floor(extract(epoch FROM at) / 900) * 900)"


def _weighted(g: str) -> str:
    return f"SUM({g} * readings) / NULLIF(SUM(readings) FILTER (WHERE {g} IS NOT NULL), 0)"


def _last(column: str) -> str:
    return f"(ARRAY_AGG({column} ORDER BY at DESC) FILTER (WHERE {column} IS NOT NULL))[1]"


GPU_SELECT = {
    "readings": "SUM(readings)",
    **{g: _weighted(g) for g in GAUGES},
    "throttle_reasons": "BIT_OR(throttle_reasons)",
    "ecc_corrected": _last("ecc_corrected"),
    "ecc_uncorrected": _last("ecc_uncorrected"),
    "retired_pages_pending": "BOOL_OR(retired_pages_pending)",
    "remapped_rows_pending": "BOOL_OR(remapped_rows_pending)",
    "xid": _last("xid"),
}
GPU_MERGE = {
    "readings": "s.readings + EXCLUDED.readings",
    **{
        g: f"CASE WHEN EXCLUDED.{g} IS NULL THEN s.{g} WHEN s.{g} IS NULL THEN EXCLUDED.{g} "
        f"ELSE (s.{g} * s.readings + EXCLUDED.{g} * EXCLUDED.readings) / (s.readings + EXCLUDED.readings) END"
        for g in GAUGES
    },
    "throttle_reasons": "s.throttle_reasons | EXCLUDED.throttle_reasons",
    "ecc_corrected": "COALESCE(EXCLUDED.ecc_corrected, s.ecc_corrected)",
    "ecc_uncorrected": "COALESCE(EXCLUDED.ecc_uncorrected, s.ecc_uncorrected)",
    "retired_pages_pending": "s.retired_pages_pending OR EXCLUDED.retired_pages_pending",
    "remapped_rows_pending": "s.remapped_rows_pending OR EXCLUDED.remapped_rows_pending",
    "xid": "COALESCE(EXCLUDED.xid, s.xid)",
}
COUNTS = ("requests", "errors", "prompt_tokens", "completion_tokens")
DEPLOYMENT_SELECT = {
    **{c: f"SUM({c})" for c in COUNTS},
    "tokens_per_s": "AVG(tokens_per_s)",
    "latency_p50_ms": "AVG(latency_p50_ms)",
    "latency_p95_ms": "MAX(latency_p95_ms)",
    "ttft_p50_ms": "AVG(ttft_p50_ms)",
    "queue": _last("queue"),
}
DEPLOYMENT_MERGE = {
    **{c: f"s.{c} + EXCLUDED.{c}" for c in COUNTS},
    "latency_p95_ms": "GREATEST(s.latency_p95_ms, EXCLUDED.latency_p95_ms)",
    **{c: f"COALESCE(EXCLUDED.{c}, s.{c})" for c in ("tokens_per_s", "latency_p50_ms", "ttft_p50_ms", "queue")},
}


def _downsample(model, owner: str, select: dict, merge: dict, start: datetime, end: datetime) -> int:
    """Fold the minute rows in [start, end) into 15-minute rows and delete them; how many minute rows went."""
    table = model._meta.db_table
    columns = ", ".join(select)
    # Table and columns are this module's constants; values go as parameters.
    sql = (
        f"INSERT INTO {table} AS s ({owner}, at, resolution, {columns}) "  # noqa: S608
        f"SELECT {owner}, {_BUCKET} AS bucket, {QUARTER}, {', '.join(select.values())} FROM {table} "
        f"WHERE resolution = {MINUTE} AND at >= %s AND at < %s GROUP BY {owner}, bucket "
        f"ON CONFLICT ({owner}, resolution, at) DO UPDATE SET "
        + ", ".join(f"{column} = {expression}" for column, expression in merge.items())
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [start, end])
        delete = f"DELETE FROM {table} WHERE resolution = {MINUTE} AND at >= %s AND at < %s"  # noqa: S608
        cursor.execute(delete, [start, end])
        return cursor.rowcount


def _fold(model, owner: str, select: dict, merge: dict, cutoff: datetime) -> int:
    folded = 0
    while True:
        oldest = model.objects.filter(resolution=MINUTE, at__lt=cutoff).order_by("at").values_list("at", flat=True)
        first = oldest.first()
        if first is None:
            return folded
        start = quarter_of(first)
        with transaction.atomic():
            folded += _downsample(model, owner, select, merge, start, min(cutoff, start + SLICE))


def downsample_samples(*, now: datetime | None = None) -> dict:
    """Beat (every TELEMETRY_DOWNSAMPLE_SECONDS): minute rows older than TELEMETRY_MINUTE_DAYS become 15-minute rows
    (the cutoff falls on a quarter, so each 15-minute row is made from all of its minutes at once); 15-minute rows
    older than TELEMETRY_QUARTER_DAYS are deleted. Returns the counts."""
    now = now or timezone.now()
    cutoff = quarter_of(now - timedelta(days=settings.TELEMETRY_MINUTE_DAYS))
    expiry = now - timedelta(days=settings.TELEMETRY_QUARTER_DAYS)
    result = {
        "gpu_minutes_folded": _fold(GpuSample, "gpu_id", GPU_SELECT, GPU_MERGE, cutoff),
        "deployment_minutes_folded": _fold(
            DeploymentSample, "deployment_id", DEPLOYMENT_SELECT, DEPLOYMENT_MERGE, cutoff
        ),
    }
    result["gpu_quarters_deleted"] = GpuSample.objects.filter(resolution=QUARTER, at__lt=expiry).delete()[0]
    result["deployment_quarters_deleted"] = DeploymentSample.objects.filter(resolution=QUARTER, at__lt=expiry).delete()[
        0
    ]
    return result


def _series(queryset, since: datetime, until: datetime | None):
    """Minute rows alone when the span lies within the minute window; else the 15-minute rows of the older part and
    the minute rows of the last TELEMETRY_MINUTE_DAYS, the finest the console keeps."""
    rows = queryset.filter(at__gte=since)
    if until is not None:
        rows = rows.filter(at__lt=until)
    minute_start = quarter_of(timezone.now() - timedelta(days=settings.TELEMETRY_MINUTE_DAYS))
    if since >= minute_start:
        rows = rows.filter(resolution=MINUTE)
    return rows.order_by("at", "resolution")


def gpu_series(gpu, *, since: datetime, until: datetime | None = None):
    """A GPU's samples over [since, until), oldest first (a QuerySet of GpuSample)."""
    return _series(GpuSample.objects.filter(gpu=gpu), since, until)


def deployment_series(deployment, *, since: datetime, until: datetime | None = None):
    """A deployment's samples over [since, until), oldest first (a QuerySet of DeploymentSample)."""
    return _series(DeploymentSample.objects.filter(deployment=deployment), since, until)

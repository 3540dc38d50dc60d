"""Series for the console's charts: a host's GPUs, the fleet's GPUs, a deployment's serving figures.

Each chart reads as uPlot draws it: one x axis (Unix seconds, the start of each interval) shared by the figure's
charts, and per chart a list of series `{"label", "values"}` with None where nothing was measured (a gap, not a
zero). The console's own samples (deployments/monitoring/models.py) serve every chart; with settings.PROMETHEUS_URL
set, every chart reads Prometheus' range queries instead (deployments/monitoring/prometheus.py; the series the
contract of issue 19 names), and falls back to the samples, with a note saying why, when Prometheus does not
answer. `source` says which.

Windows: 1 hour and 24 hours at the 1-minute samples, 7 and 30 days at the 15-minute ones. Where a window lacks
rows of its step, finer rows are averaged (counters added) into it: the minute rows of a quarter the downsampling
has not reached yet, or deployment samples taken more often than a minute (DEPLOYMENT_SAMPLE_SECONDS < 60).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.conf import settings
from django.db.models import Avg, Q, Sum
from django.utils import timezone
from django.utils.translation import gettext as _

from deployments.models import Deployment, Gpu
from deployments.monitoring import prometheus
from deployments.monitoring.models import MINUTE, QUARTER, DeploymentSample, GpuSample

CONSOLE = "console"
PROMETHEUS = "prometheus"


@dataclass(frozen=True)
class Window:
    key: str
    seconds: int
    step: int  # seconds per point


WINDOWS: dict[str, Window] = {
    "1h": Window("1h", 3600, MINUTE),
    "24h": Window("24h", 86400, MINUTE),
    "7d": Window("7d", 7 * 86400, QUARTER),
    "30d": Window("30d", 30 * 86400, QUARTER),
}
DEFAULT_WINDOW = "24h"


def window_of(key: str | None) -> Window:
    """The window named by `key` (None or "" is the default); ValueError for any other name."""
    if not key:
        return WINDOWS[DEFAULT_WINDOW]
    if key not in WINDOWS:
        raise ValueError(_("Choose a window among %(choices)s.") % {"choices": ", ".join(WINDOWS)})
    return WINDOWS[key]


@dataclass
class Chart:
    key: str
    unit: str
    series: list[dict] = field(default_factory=list)  # [{"label": str, "values": [float | None]}]


@dataclass
class Figure:
    """What one JSON endpoint answers: a window's x axis and its charts, and where the figures came from."""

    window: Window
    start: int
    end: int
    x: list[int]
    charts: list[Chart]
    source: str = CONSOLE
    note: str = ""  # why Prometheus was not used, when it was asked for

    def as_dict(self) -> dict:
        return {
            "window": self.window.key,
            "step": self.window.step,
            "start": self.start,
            "end": self.end,
            "source": self.source,
            "source_label": source_label(self.source),
            "note": self.note,
            "x": self.x,
            "charts": [{"key": c.key, "unit": c.unit, "series": c.series} for c in self.charts],
            "points": sum(1 for c in self.charts for s in c.series for v in s["values"] if v is not None),
        }


def source_label(source: str) -> str:
    if source == PROMETHEUS:
        return _("Prometheus (%(url)s)") % {"url": settings.PROMETHEUS_URL}
    return _("the console's own samples")


def _bounds(window: Window, now: datetime | None) -> tuple[int, int]:
    end = int((now or timezone.now()).timestamp())
    end -= end % window.step
    return end - window.seconds, end


def _timestamp(moment: datetime) -> int:
    return int(moment.timestamp())


def _samples(model, filters: dict, start: int, end: int):
    since, until = datetime.fromtimestamp(start, tz=UTC), datetime.fromtimestamp(end, tz=UTC)
    return model.objects.filter(**filters, at__gte=since, at__lt=until)


def _finer(base, owner: str, step: int, fields: tuple, sums: frozenset, skip) -> dict[tuple[int, int], dict]:
    """Rows finer than `step` (minute rows in a 15-minute window, or samples taken more often than a minute)
    averaged, or for counters in `sums` added, into buckets of `step`; buckets for which skip(owner, at) holds
    are left out (they have rows of their own)."""
    gathered: dict[tuple[int, int], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for row in base.filter(resolution__lt=step).values(owner, "at", *fields):
        at = _timestamp(row["at"])
        key = (row[owner], at - at % step)
        if skip(*key):
            continue
        for name in fields:
            if row[name] is not None:
                gathered[key][name].append(row[name])
    return {
        key: {
            name: (sum(v) if name in sums else sum(v) / len(v)) if (v := values.get(name)) else None for name in fields
        }
        for key, values in gathered.items()
    }


def _rows(model, filters: dict, window: Window, start: int, end: int, fields: Iterable[str], sums: frozenset):
    """{(owner id, bucket start): {field: value}} at the window's step: its own rows, and for buckets it lacks,
    the finer rows averaged (or, for counters in `sums`, added) into them."""
    fields = tuple(fields)
    owner = "gpu_id" if model is GpuSample else "deployment_id"
    base = _samples(model, filters, start, end)
    buckets: dict[tuple[int, int], dict] = {}
    for row in base.filter(resolution=window.step).values(owner, "at", *fields):
        buckets[(row[owner], _timestamp(row["at"]))] = {name: row[name] for name in fields}
    buckets.update(_finer(base, owner, window.step, fields, sums, lambda *key: key in buckets))
    return buckets


def _axis(start: int, end: int, step: int) -> list[int]:
    return list(range(start, end, step))


def _either(from_prometheus: Callable[[], Figure], from_samples: Callable[[], Figure]) -> Figure:
    """Prometheus' figure when settings.PROMETHEUS_URL is set and it answers; else the samples', saying why."""
    note = ""
    if settings.PROMETHEUS_URL:
        try:
            return from_prometheus()
        except prometheus.PrometheusError as error:
            note = _("Prometheus did not answer (%(error)s); these are the console's own samples.") % {"error": error}
    figure = from_samples()
    figure.note = note
    return figure


# -- a host's GPUs ---------------------------------------------------------------------------------------------
GPU_CHARTS = (
    ("utilization", "%", "utilization"),
    ("memory", "GB", "memory_used"),
    ("temperature", "°C", "temperature"),
    ("power", "W", "power_w"),
)
GB = 10**9


def _gpu_value(name: str, value):
    if value is None:
        return None
    return round(value / GB, 3) if name == "memory_used" else round(float(value), 2)


def host_gpu_charts(gpus: list[Gpu], window: Window, *, now: datetime | None = None) -> Figure:
    """Utilisation, memory used, temperature and power of each of a host's GPUs: a line per GPU per chart; from
    the agent's exporter through Prometheus when settings.PROMETHEUS_URL is set, else from the samples."""
    return _either(
        lambda: _host_from_prometheus(gpus, window, now=now), lambda: _host_from_samples(gpus, window, now=now)
    )


def _gpu_label(gpu: Gpu) -> str:
    return _("GPU %(index)s") % {"index": gpu.index}


def _host_from_samples(gpus: list[Gpu], window: Window, *, now: datetime | None) -> Figure:
    start, end = _bounds(window, now)
    fields = [column for _key, _unit, column in GPU_CHARTS]
    rows = _rows(GpuSample, {"gpu__in": gpus}, window, start, end, fields, frozenset())
    x = _axis(start, end, window.step)
    charts = [Chart(key, unit) for key, unit, _column in GPU_CHARTS]
    for gpu in gpus:
        for chart, (_key, _unit, column) in zip(charts, GPU_CHARTS, strict=True):
            values = [_gpu_value(column, rows.get((gpu.pk, at), {}).get(column)) for at in x]
            chart.series.append({"label": _gpu_label(gpu), "values": values})
    return Figure(window, start, end, x, charts)


# The agent exporter's series (contract of issue 19), labelled host and gpu (the index).
GPU_METRICS = {
    "utilization": "llmdeploy_gpu_utilization_percent",
    "memory_used": "llmdeploy_gpu_memory_used_bytes",
    "temperature": "llmdeploy_gpu_temperature_celsius",
    "power_w": "llmdeploy_gpu_power_watts",
}


def _host_from_prometheus(gpus: list[Gpu], window: Window, *, now: datetime | None) -> Figure:
    start, end = _bounds(window, now)
    x = _axis(start, end, window.step)
    charts = [Chart(key, unit) for key, unit, _column in GPU_CHARTS]
    if not gpus:
        return Figure(window, start, end, x, charts, source=PROMETHEUS)
    client = prometheus.Prometheus(settings.PROMETHEUS_URL)
    host = _label_value(gpus[0].host.name)
    for chart, (_key, _unit, column) in zip(charts, GPU_CHARTS, strict=True):
        # each point the mean over its interval, as a sample is; one series per GPU index
        query = f'max by (gpu) (avg_over_time({GPU_METRICS[column]}{{host="{host}"}}[{window.step}s]))'
        found = client.query_range_series(query, start=start, end=end - window.step, step=window.step)
        by_index = {labels.get("gpu"): points for labels, points in found}
        for gpu in gpus:
            points = by_index.get(str(gpu.index), {})
            chart.series.append({"label": _gpu_label(gpu), "values": [_gpu_value(column, points.get(at)) for at in x]})
    return Figure(window, start, end, x, charts, source=PROMETHEUS)


def fleet_gpu_charts(gpus: list[Gpu], window: Window, *, now: datetime | None = None) -> Figure:
    """The fleet's GPUs together: mean utilisation, and memory used against the memory of the GPUs that reported,
    per interval; through Prometheus when settings.PROMETHEUS_URL is set, else from the samples."""
    return _either(lambda: _fleet_from_prometheus(window, now=now), lambda: _fleet_from_samples(gpus, window, now=now))


def _fleet_charts(utilization: list, used: list, total: list) -> list[Chart]:
    return [
        Chart("utilization", "%", [{"label": _("mean utilisation"), "values": utilization}]),
        Chart(
            "memory",
            "GB",
            [
                {"label": _("memory used"), "values": used},
                {"label": _("memory of the GPUs reporting"), "values": total},
            ],
        ),
    ]


def _fleet_from_prometheus(window: Window, *, now: datetime | None) -> Figure:
    """Every GPU Prometheus scrapes (hosts are not granted one by one: whoever sees the fleet sees every host)."""
    start, end = _bounds(window, now)
    x = _axis(start, end, window.step)
    client = prometheus.Prometheus(settings.PROMETHEUS_URL)
    over = f"[{window.step}s]"
    queries = {
        "utilization": f"avg(avg_over_time({GPU_METRICS['utilization']}{over}))",
        "used": f"sum(avg_over_time({GPU_METRICS['memory_used']}{over}))",
        "total": f"sum(avg_over_time(llmdeploy_gpu_memory_total_bytes{over}))",
    }
    found = {
        key: client.query_range(query, start=start, end=end - window.step, step=window.step)
        for key, query in queries.items()
    }
    utilization = [_rounded(found["utilization"].get(at)) for at in x]
    used = [_gpu_value("memory_used", found["used"].get(at)) for at in x]
    total = [_gpu_value("memory_used", found["total"].get(at)) for at in x]
    return Figure(window, start, end, x, _fleet_charts(utilization, used, total), source=PROMETHEUS)


def _fleet_from_samples(gpus: list[Gpu], window: Window, *, now: datetime | None) -> Figure:
    """Summed by the database: a fleet's day is a row per GPU per minute."""
    start, end = _bounds(window, now)
    base = _samples(GpuSample, {"gpu__in": gpus}, start, end)
    reported = Q(memory_used__isnull=False)
    totals = {
        _timestamp(row["at"]): (row["busy"], row["used"], row["total"])
        for row in base.filter(resolution=window.step)
        .values("at")
        .annotate(busy=Avg("utilization"), used=Sum("memory_used"), total=Sum("memory_total", filter=reported))
    }
    fields = ("utilization", "memory_used", "memory_total")
    finer: dict[int, list[dict]] = defaultdict(list)
    for (_gpu, at), values in _finer(
        base, "gpu_id", window.step, fields, frozenset(), lambda _g, at: at in totals
    ).items():
        finer[at].append(values)
    for at, readings in finer.items():
        busy = [r["utilization"] for r in readings if r["utilization"] is not None]
        memory = [r for r in readings if r["memory_used"] is not None]
        totals[at] = (
            sum(busy) / len(busy) if busy else None,
            sum(r["memory_used"] for r in memory) if memory else None,
            sum(r["memory_total"] or 0 for r in memory) if memory else None,
        )
    x = _axis(start, end, window.step)
    utilization, used, total = [], [], []
    for at in x:
        busy, memory, capacity = totals.get(at, (None, None, None))
        utilization.append(round(busy, 2) if busy is not None else None)
        used.append(round(memory / GB, 3) if memory is not None else None)
        total.append(round(capacity / GB, 3) if memory is not None and capacity is not None else None)
    return Figure(window, start, end, x, _fleet_charts(utilization, used, total))


# -- a deployment's serving figures ----------------------------------------------------------------------------
DEPLOYMENT_FIELDS = (
    "requests",
    "errors",
    "completion_tokens",
    "tokens_per_s",
    "latency_p50_ms",
    "latency_p95_ms",
    "ttft_p50_ms",
    "queue",
)
COUNTERS = frozenset({"requests", "errors", "completion_tokens"})


def _deployment_layout() -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(chart, unit, [(sample field, series label)]) in the reader's language."""
    return [
        ("tokens", _("tokens/s"), [("tokens_per_s", _("completion tokens/s"))]),
        ("queue", _("requests"), [("queue", _("waiting in the server's queue"))]),
        (
            "latency",
            "ms",
            [
                ("latency_p50_ms", _("latency p50")),
                ("latency_p95_ms", _("latency p95")),
                ("ttft_p50_ms", _("TTFT p50")),
            ],
        ),
        ("errors", _("per interval"), [("requests", _("requests")), ("errors", _("errors"))]),
    ]


def deployment_charts(deployment: Deployment, window: Window, *, now: datetime | None = None) -> Figure:
    """Tokens/s, queue, latency (p50, p95, TTFT p50) and errors of a deployment: from Prometheus when
    settings.PROMETHEUS_URL is set and it answers, else (and then saying why) from the console's samples."""
    return _either(
        lambda: _deployment_from_prometheus(deployment, window, now=now),
        lambda: _deployment_from_samples(deployment, window, now=now),
    )


def _deployment_from_samples(deployment: Deployment, window: Window, *, now: datetime | None) -> Figure:
    start, end = _bounds(window, now)
    rows = _rows(DeploymentSample, {"deployment": deployment}, window, start, end, DEPLOYMENT_FIELDS, COUNTERS)
    x = _axis(start, end, window.step)
    charts = []
    for key, unit, series in _deployment_layout():
        chart = Chart(key, unit)
        for column, label in series:
            values = [rows.get((deployment.pk, at), {}).get(column) for at in x]
            chart.series.append({"label": label, "values": [_rounded(v) for v in values]})
        charts.append(chart)
    return Figure(window, start, end, x, charts)


def _rounded(value) -> float | None:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    return round(float(value), 3)


def deployment_queries(deployment: Deployment, window: Window) -> dict[str, str]:
    """PromQL per sample field, over the series the contract of issue 19 names: the gateway's (the console's
    /metrics) and the server's own (TGI's tgi_*, vLLM's vllm:*), all labelled with the deployment's name."""
    match = f'deployment="{_label_value(deployment.name)}"'
    rate = f"{max(window.step * 2, 120)}s"  # two samples at least inside each rate window
    duration = f"llmdeploy_gateway_request_duration_seconds_bucket{{{match}}}"
    ttft = f"vllm:time_to_first_token_seconds_bucket{{{match}}}"
    per_step = window.step
    return {
        "tokens_per_s": f'sum(rate(llmdeploy_gateway_tokens_total{{{match},kind="completion"}}[{rate}]))',
        "queue": f"sum(tgi_queue_size{{{match}}}) or sum(vllm:num_requests_waiting{{{match}}})",
        "latency_p50_ms": f"histogram_quantile(0.5, sum by (le) (rate({duration}[{rate}]))) * 1000",
        "latency_p95_ms": f"histogram_quantile(0.95, sum by (le) (rate({duration}[{rate}]))) * 1000",
        "ttft_p50_ms": f"histogram_quantile(0.5, sum by (le) (rate({ttft}[{rate}]))) * 1000",
        "requests": f"sum(increase(llmdeploy_gateway_requests_total{{{match}}}[{per_step}s]))",
        # answers of 400 or more, as the samples and the usage pages count errors (the gateway's own errors
        # counter holds only its 5xx)
        "errors": f'sum(increase(llmdeploy_gateway_requests_total{{{match},code=~"[45].."}}[{per_step}s]))',
    }


def _label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _deployment_from_prometheus(deployment: Deployment, window: Window, *, now: datetime | None) -> Figure:
    start, end = _bounds(window, now)
    x = _axis(start, end, window.step)
    client = prometheus.Prometheus(settings.PROMETHEUS_URL)
    values: dict[str, list] = {}
    for column, query in deployment_queries(deployment, window).items():
        # the range's end is the last point's time: Prometheus answers start, start+step, ..., end inclusive
        answer = client.query_range(query, start=start, end=end - window.step, step=window.step)
        values[column] = [_rounded(answer.get(at)) for at in x]
    charts = []
    for key, unit, series in _deployment_layout():
        charts.append(Chart(key, unit, [{"label": label, "values": values[column]} for column, label in series]))
    return Figure(window, start, end, x, charts, source=PROMETHEUS)

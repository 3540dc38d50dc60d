"""The agent's Prometheus exporter: each GPU's NVML telemetry, the model store's disk, and what the agent is.

Prometheus scrapes it at the address the agent reports as its host's `metrics_address` (discovery lists it).
`start_exporter` serves a private registry over HTTP in a daemon thread; every scrape reads NVML afresh
(workers.nvml.read_telemetry), so the series are as fresh as the scrape. XID errors are events: the collector holds
its own cursor on the agent's XidListener and counts each XID per GPU since the exporter started.
"""

from __future__ import annotations

import errno
import hmac
import logging
import shutil
import socket
import threading
from collections import Counter
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer

from workers.nvml import THROTTLE_THERMAL, GpuTelemetry, XidCursor, discover, read_telemetry

logger = logging.getLogger(__name__)
GPU_LABELS = ["host", "gpu", "uuid", "name"]


class GpuCollector:
    """Collects the agent's series at each scrape (a prometheus_client custom collector)."""

    def __init__(
        self,
        host: str,
        nvml,
        *,
        xids: XidCursor | None = None,
        model_store: str | Path = "",
        version: str = "",
        source: str = "nvml",
    ) -> None:
        self.host, self.nvml, self.xids = host, nvml, xids
        self.model_store, self.version, self.source = str(model_store), version, source
        self.xid_counts: Counter[tuple[str, str, str, str]] = Counter()  # (gpu, uuid, name, xid) since start
        self._identity: tuple[str, str, dict[str, str]] | None = None  # driver, cuda, name by uuid
        self._lock = threading.Lock()  # concurrent scrapes must not take the same XIDs twice

    def describe(self) -> list:
        return []  # registering reads no GPU

    def _identify(self, readings: list[GpuTelemetry]) -> tuple[str, str, dict[str, str]]:
        """Driver, CUDA and GPU names: read once (they change only with a reboot), again when a GPU is new."""
        if self._identity is None or any(t.uuid not in self._identity[2] for t in readings):
            found = discover(self.nvml)
            self._identity = (found.driver_version, found.cuda_version, {g.uuid: g.name for g in found.gpus})
        return self._identity

    def collect(self):
        with self._lock:
            readings = read_telemetry(self.nvml, self.xids)
            driver, cuda, names = self._identify(readings)
            for t in readings:
                for xid in t.xids:
                    self.xid_counts[(str(t.index), t.uuid, names.get(t.uuid, ""), str(xid))] += 1
            xid_counts = dict(self.xid_counts)
        yield from _gpu_families(self.host, readings, names)
        xid_family = CounterMetricFamily(
            "llmdeploy_gpu_xid_errors", "XID errors NVML reported since the agent started.", labels=[*GPU_LABELS, "xid"]
        )
        for (gpu, uuid, name, xid), count in sorted(xid_counts.items()):
            xid_family.add_metric([self.host, gpu, uuid, name, xid], count)
        yield xid_family
        yield from _store_families(self.host, self.model_store)
        info = GaugeMetricFamily(
            "llmdeploy_agent_info",
            "The agent: its version, the NVIDIA driver and CUDA it sees, where its GPU readings come from.",
            labels=["host", "version", "driver", "cuda", "source"],
        )
        info.add_metric([self.host, self.version, driver, cuda, self.source], 1)
        yield info


# (series, help, the reading's field) of the plain per-GPU gauges; a field NVML could not read (None) is left out.
GAUGES = [
    ("llmdeploy_gpu_utilization_percent", "GPU utilization (percent of the last sample period).", "utilization"),
    ("llmdeploy_gpu_memory_used_bytes", "GPU memory in use.", "memory_used"),
    ("llmdeploy_gpu_memory_total_bytes", "GPU memory in all.", "memory_total"),
    ("llmdeploy_gpu_temperature_celsius", "GPU core temperature.", "temperature"),
    ("llmdeploy_gpu_power_watts", "GPU power draw.", "power_w"),
    ("llmdeploy_gpu_power_limit_watts", "GPU power limit in force.", "power_limit_w"),
    ("llmdeploy_gpu_sm_clock_mhz", "SM clock.", "sm_clock_mhz"),
    ("llmdeploy_gpu_memory_clock_mhz", "Memory clock.", "memory_clock_mhz"),
    (
        "llmdeploy_gpu_throttle_reasons",
        "NVML clocks-event-reasons bitmask.",
        "throttle_reasons",
    ),
]


def _gpu_families(host: str, readings: list[GpuTelemetry], names: dict[str, str]):
    def labels(t: GpuTelemetry) -> list[str]:
        return [host, str(t.index), t.uuid, names.get(t.uuid, "")]

    for series, text, field in GAUGES:
        family = GaugeMetricFamily(series, text, labels=GPU_LABELS)
        for t in readings:
            if getattr(t, field) is not None:
                family.add_metric(labels(t), float(getattr(t, field)))
        yield family
    thermal = GaugeMetricFamily(
        "llmdeploy_gpu_thermal_throttle",
        "1 while clocks are held down for heat.",
        labels=GPU_LABELS,
    )
    ecc = CounterMetricFamily(
        "llmdeploy_gpu_ecc_errors", "Volatile ECC errors since the driver loaded.", labels=[*GPU_LABELS, "type"]
    )
    retired = GaugeMetricFamily("llmdeploy_gpu_retired_pages", "Retired memory pages.", labels=[*GPU_LABELS, "cause"])
    retired_pending = GaugeMetricFamily(
        "llmdeploy_gpu_retired_pages_pending",
        "1 while a page waits for a GPU reset to be retired.",
        labels=GPU_LABELS,
    )
    remapped = GaugeMetricFamily("llmdeploy_gpu_remapped_rows", "Remapped memory rows.", labels=[*GPU_LABELS, "type"])
    remapped_pending = GaugeMetricFamily(
        "llmdeploy_gpu_remapped_rows_pending",
        "1 while a row waits to be remapped (a GPU reset remaps it).",
        labels=GPU_LABELS,
    )
    for t in readings:
        thermal.add_metric(labels(t), 1.0 if t.throttle_reasons & THROTTLE_THERMAL else 0.0)
        for kind, value in (("corrected", t.ecc_corrected), ("uncorrected", t.ecc_uncorrected)):
            if value is not None:
                ecc.add_metric([*labels(t), kind], value)
        for cause, value in (("single_bit", t.retired_pages_single), ("double_bit", t.retired_pages_double)):
            if value is not None:
                retired.add_metric([*labels(t), cause], value)
        if t.retired_pages_single is not None or t.retired_pages_pending:  # a GPU that remaps rows retires no pages
            retired_pending.add_metric(labels(t), float(t.retired_pages_pending))
        rows = (("correctable", t.remapped_rows_correctable), ("uncorrectable", t.remapped_rows_uncorrectable))
        for kind, value in rows:
            if value is not None:
                remapped.add_metric([*labels(t), kind], value)
        if t.remapped_rows_correctable is not None or t.remapped_rows_pending:
            remapped_pending.add_metric(labels(t), float(t.remapped_rows_pending))
    yield from (thermal, ecc, retired, retired_pending, remapped, remapped_pending)


def _store_families(host: str, model_store: str):
    size = GaugeMetricFamily("llmdeploy_model_store_size_bytes", "Size of the model store's disk.", labels=["host"])
    free = GaugeMetricFamily("llmdeploy_model_store_free_bytes", "Free space on the store's disk.", labels=["host"])
    if model_store:
        try:
            usage = shutil.disk_usage(model_store)
        except OSError:  # not created yet, or unmounted: no series rather than a wrong one
            usage = None
        if usage is not None:
            size.add_metric([host], usage.total)
            free.add_metric([host], usage.free)
    yield from (size, free)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:
        pass  # a scrape every 15 s is not news


def metrics_app(registry: CollectorRegistry, token: str = ""):
    """The registry as a WSGI app; with a token, a request without `Authorization: Bearer <token>` is a 401."""
    metrics = make_wsgi_app(registry)
    expected = f"Bearer {token}".encode()

    def app(environ, start_response):
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if token and not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
            return [b"a bearer token is required\n"]
        return metrics(environ, start_response)

    return app


def start_exporter(
    host_name: str,
    address: str,
    port: int,
    *,
    nvml=None,
    xids: XidCursor | None = None,
    token: str | None = None,
    model_store: str | Path | None = None,
    version: str = "",
) -> tuple[ThreadingWSGIServer, str] | None:
    """Serve the agent's series at address:port (0: a free port) in a daemon thread.

    Returns the server and the "host:port" it is bound to, or None when the port is taken or cannot be bound
    (logged once): the agent runs on without an exporter. nvml, token and model_store default to the agent's settings.
    """
    from django.conf import settings

    from workers.nvml import load_nvml

    registry = CollectorRegistry(auto_describe=False)
    registry.register(
        GpuCollector(
            host_name,
            nvml if nvml is not None else load_nvml(settings.AGENT_NVML_MODULE),
            xids=xids,
            model_store=model_store if model_store is not None else settings.MODEL_STORE,
            version=version,
        )
    )
    if settings.AGENT_METRICS_PROCESS_COUNTERS:
        # A GPU host's own Celery processes time jobs and count downloaded bytes into its own directory, which the
        # console's /metrics cannot read: the agent serves them beside its GPU series.
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
    app = metrics_app(registry, settings.METRICS_BEARER_TOKEN if token is None else token)

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    try:
        server = make_server(address, port, app, Server, handler_class=_QuietHandler)
    except OSError as exc:  # taken (EADDRINUSE), or an address this host does not have: the agent goes on
        reason = "is taken" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc})"
        logger.warning("agent %s: port %s on %s %s; no metrics exporter", host_name, port, address, reason)
        return None
    threading.Thread(target=server.serve_forever, name=f"agent-exporter-{host_name}", daemon=True).start()
    bound_host, bound_port = server.server_address[:2]
    return server, f"{_host_part(bound_host)}:{bound_port}"


def advertised_address(bound: str, configured: str = "") -> str:
    """Where Prometheus reaches the exporter: the configured address, or this host's name when bound to all."""
    host, _, port = bound.rpartition(":")
    host = host.strip("[]")
    if configured and configured not in ("0.0.0.0", "::"):  # noqa: S104 - a comparison, not a bind
        host = configured
    elif host in ("0.0.0.0", "::", ""):  # noqa: S104
        host = socket.getfqdn()
    return f"{_host_part(host)}:{port}"


def _host_part(host: str) -> str:
    return f"[{host}]" if ":" in host else host

"""The GPU host agent: a Celery worker that also consumes `host.<name>` and, while it runs, reports
the host's GPUs (read through NVML) and a heartbeat to the database every AGENT_HEARTBEAT_SECONDS.

Start one per GPU host (docs/operations.md):
    AGENT_HOST_NAME=gpu-node-1 celery -A console worker -Q celery,host.gpu-node-1 -n agent@gpu-node-1
`make run` does the same for the local machine.

Each heartbeat also carries every GPU's telemetry (workers.nvml.read_telemetry, or an NVIDIA DCGM exporter's text
with AGENT_GPU_METRICS_SOURCE=dcgm) and where Prometheus scrapes this host's GPU series: the agent's own exporter
(workers.gpu_exporter, on AGENT_METRICS_PORT) or, with dcgm, the DCGM exporter.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from dataclasses import asdict

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import close_old_connections, connection

from deployments.inventory.services import host_report, hosts_mark_offline
from deployments.jobs.reaper import jobs_orphaned_by_restart, jobs_reap
from deployments.registry.layout import ensure_store
from workers import dcgm, gpu_exporter
from workers.nvml import GpuTelemetry, XidCursor, XidListener, discover, load_nvml, read_telemetry

logger = logging.getLogger(__name__)
AGENT_VERSION = "0.1.0"


def local_host_name() -> str:
    """This machine's name as a host name: lowercase letters, digits and hyphens."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
    return name[:63] or "localhost"


# The discovery note (why no GPU is read) this agent process has logged, per host name: said once per agent start
# and again only when it changes. Every heartbeat (AGENT_HEARTBEAT_SECONDS) would repeat it, and the host page
# shows it already.
_notes_said: dict[str, str] = {}


def _log_note(name: str, note: str) -> None:
    if not note:
        _notes_said.pop(name, None)  # GPUs are read again: a later loss is news
        return
    level = logging.DEBUG if _notes_said.get(name) == note else logging.WARNING
    _notes_said[name] = note
    logger.log(level, "agent %s: %s", name, note)


class Telemetry:
    """Where this agent's GPU readings come from while it runs: NVML (with an XID listener) or a DCGM exporter."""

    def __init__(self) -> None:
        self.source = settings.AGENT_GPU_METRICS_SOURCE
        self.listener: XidListener | None = None
        self.heartbeat_xids: XidCursor | None = None
        self.dcgm = dcgm.DcgmReader(settings.DCGM_EXPORTER_URL) if self.source == "dcgm" else None
        self.exporter = None  # (server, bound "host:port") of the agent's own exporter
        self.metrics_address = dcgm.exporter_address(settings.DCGM_EXPORTER_URL) if self.dcgm else ""

    def start(self, name: str) -> None:
        if self.dcgm is not None:
            return  # Prometheus scrapes the DCGM exporter; the agent serves no GPU series of its own
        self.listener = XidListener(load_nvml(settings.AGENT_NVML_MODULE))
        self.heartbeat_xids = self.listener.cursor()
        exporter_xids = self.listener.cursor()
        self.listener.start()
        if settings.AGENT_METRICS_PORT:
            address, port = settings.AGENT_METRICS_ADDRESS, settings.AGENT_METRICS_PORT
            self.exporter = gpu_exporter.start_exporter(name, address, port, xids=exporter_xids, version=AGENT_VERSION)
        if self.exporter is not None:
            self.metrics_address = gpu_exporter.advertised_address(self.exporter[1], settings.AGENT_METRICS_ADDRESS)
            logger.info("agent %s: GPU metrics at http://%s/metrics", name, self.metrics_address)

    def read(self) -> list[GpuTelemetry]:
        if self.dcgm is not None:
            return self.dcgm.read()
        return read_telemetry(load_nvml(settings.AGENT_NVML_MODULE), self.heartbeat_xids)

    def stop(self) -> None:
        if self.exporter is not None:
            self.exporter[0].shutdown()
            self.exporter[0].server_close()
            self.exporter = None
        if self.listener is not None:
            self.listener.stop()


# This process's telemetry while its agent runs (start_agent to stop_agent); report_once without a running agent
# (tests, the shell) reads NVML or DCGM afresh and reports no exporter.
_telemetry: Telemetry | None = None


def report_once(name: str):
    """Read the GPUs and their telemetry and write them and a heartbeat; returns the Host."""
    discovery = discover(load_nvml(settings.AGENT_NVML_MODULE))
    _log_note(name, discovery.note)
    telemetry = _telemetry or Telemetry()
    return host_report(
        name=name,
        discovery=discovery,
        agent_version=AGENT_VERSION,
        address=socket.getfqdn(),
        model_store=str(settings.MODEL_STORE),
        runtime=settings.AGENT_RUNTIME,
        telemetry=[asdict(reading) for reading in telemetry.read()],
        metrics_address=telemetry.metrics_address,
    )


class Heartbeat(threading.Thread):
    """Reports every AGENT_HEARTBEAT_SECONDS until stopped; a failed report is logged and retried."""

    def __init__(self, name: str, interval: float) -> None:
        super().__init__(name=f"agent-heartbeat-{name}", daemon=True)
        self.host_name, self.interval, self.stopped = name, interval, threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                close_old_connections()
                report_once(self.host_name)
            except Exception:
                logger.exception("agent %s: heartbeat failed", self.host_name)
            finally:
                connection.close()

    def stop(self) -> None:
        self.stopped.set()


_heartbeat: Heartbeat | None = None


@worker_ready.connect
def expire_orphaned_jobs(**kwargs) -> None:
    """After a restart (or a host reboot), jobs our dead processes held are marked lost and handed on at once:
    retried while attempts remain (this worker may take them), else failed with the reason."""
    lost = jobs_orphaned_by_restart()
    if lost:
        reaped = jobs_reap()
        logger.warning(
            "job(s) %s held by dead workers on this host were lost; retried %s, failed %s",
            lost,
            [pk for pk in reaped["retried"] if pk in lost],
            [pk for pk in reaped["failed"] if pk in lost],
        )
    connection.close()


@worker_ready.connect
def start_agent(**kwargs) -> None:
    global _heartbeat, _telemetry
    name = settings.AGENT_HOST_NAME
    if not name:
        return
    ensure_store(settings.MODEL_STORE)  # this host's downloads and imports land there
    _notes_said.pop(name, None)  # each agent start says the note once
    _telemetry = Telemetry()
    _telemetry.start(name)
    host = report_once(name)
    connection.close()
    logger.info("agent %s: registered with %d GPU(s)", name, host.gpus.count())
    _heartbeat = Heartbeat(name, settings.AGENT_HEARTBEAT_SECONDS)
    _heartbeat.start()


@worker_shutdown.connect
def stop_agent(**kwargs) -> None:
    global _telemetry
    if _heartbeat is not None:
        _heartbeat.stop()
    if _telemetry is not None:
        _telemetry.stop()
        _telemetry = None


@shared_task(name="workers.agent.describe")
def describe() -> dict:
    """Runs on a host's own queue: what this agent sees now (proves routing to host.<name>)."""
    discovery = discover(load_nvml(settings.AGENT_NVML_MODULE))
    return {"host": settings.AGENT_HOST_NAME, "gpus": [gpu.name for gpu in discovery.gpus], "note": discovery.note}


@shared_task(name="workers.agent.mark_offline")
def mark_offline(offline_after: int | None = None) -> list[str]:
    """Beat: hosts without a heartbeat for HOST_OFFLINE_SECONDS become offline."""
    return [host.name for host in hosts_mark_offline(offline_after=offline_after)]

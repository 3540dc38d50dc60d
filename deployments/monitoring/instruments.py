"""The console's counters and histograms that processes other than the web write: the gateway (its own uvicorn
process) counts calls, Celery workers time jobs and count downloaded bytes.

prometheus_client's multiprocess mode: every process writes its values to files in PROMETHEUS_MULTIPROC_DIR
(console/settings.py puts the variable in the environment before prometheus_client is imported, which is when the
mode is chosen) and the console's /metrics sums the files of all processes (deployments/monitoring/metrics.py).
A process on another machine (an agent on a GPU host) writes its own host's directory, not the console's.

Nothing here may fail the caller: each function logs and carries on.
"""

from __future__ import annotations

import logging
import os
import socket

from celery.signals import worker_process_shutdown
from django.conf import settings
from prometheus_client import Counter, Histogram, multiprocess, values

logger = logging.getLogger(__name__)


def process_identifier(pid: int | None = None) -> str:
    """Names this process's files in the shared directory. Compose's web, gateway, worker and beat containers share
    it and each numbers its processes from 1, so a bare pid (prometheus_client's default) would make two of them
    write one file: the container's host name keeps them apart (no "_": the file names are split on it)."""
    return f"{socket.gethostname().replace('_', '-')}-{pid or os.getpid()}"


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Read at each metric's creation (prometheus_client.metrics looks values.ValueClass up then).
    values.ValueClass = values.MultiProcessValue(process_identifier)

# Not registered anywhere (registry=None): /metrics reads the files, not a registry of this process.
GATEWAY_REQUESTS = Counter(
    "llmdeploy_gateway_requests_total",
    "Calls through the gateway by answer code.",
    ["deployment", "code"],
    registry=None,
)
GATEWAY_TOKENS = Counter(
    "llmdeploy_gateway_tokens_total",
    "Tokens of calls through the gateway (prompt, completion).",
    ["deployment", "kind"],
    registry=None,
)
GATEWAY_ERRORS = Counter(
    "llmdeploy_gateway_errors_total",
    "Calls through the gateway answered with a server-side error (HTTP 5xx: no server, the server failed).",
    ["deployment"],
    registry=None,
)
GATEWAY_DURATION = Histogram(
    "llmdeploy_gateway_request_duration_seconds",
    "Time from a call's arrival at the gateway to its last byte.",
    ["deployment"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
    registry=None,
)
JOB_DURATION = Histogram(
    "llmdeploy_job_duration_seconds",
    "How long jobs ran, from the attempt's start to its outcome.",
    ["kind", "status"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600, 72 * 3600),
    registry=None,
)
DOWNLOAD_BYTES = Counter("llmdeploy_download_bytes_total", "Model file bytes downloaded.", registry=None)


def gateway_call(record: dict) -> None:
    """Count one call of the gateway from its inference record (deployments/gateway/app.py Call.record)."""
    try:
        deployment, status = record.get("deployment_name") or "", int(record.get("status") or 0)
        GATEWAY_REQUESTS.labels(deployment, str(status)).inc()
        if record.get("prompt_tokens"):
            GATEWAY_TOKENS.labels(deployment, "prompt").inc(record["prompt_tokens"])
        if record.get("completion_tokens"):
            GATEWAY_TOKENS.labels(deployment, "completion").inc(record["completion_tokens"])
        if status >= 500:
            GATEWAY_ERRORS.labels(deployment).inc()
        GATEWAY_DURATION.labels(deployment).observe((record.get("duration_ms") or 0) / 1000)
    except Exception:
        logger.exception("metrics: could not count a gateway call")


def job_finished(kind: str, status: str, seconds: float) -> None:
    """A job reached its outcome after `seconds`."""
    try:
        JOB_DURATION.labels(kind, status).observe(max(0.0, seconds))
    except Exception:
        logger.exception("metrics: could not time a job")


def downloaded(count: int) -> None:
    """`count` more bytes of model files arrived."""
    try:
        if count > 0:
            DOWNLOAD_BYTES.inc(count)
    except Exception:
        logger.exception("metrics: could not count downloaded bytes")


@worker_process_shutdown.connect
def _worker_process_gone(pid: int | None = None, **kwargs) -> None:
    """A Celery worker process ends: prometheus_client's bookkeeping for a dead process (its live gauges go)."""
    try:
        multiprocess.mark_process_dead(process_identifier(pid), settings.PROMETHEUS_MULTIPROC_DIR)
    except Exception:
        logger.exception("metrics: could not mark process %s dead", pid)

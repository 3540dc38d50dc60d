"""Deployment samples (DeploymentSample): what callers got from each deployment through the gateway in one interval
of settings.DEPLOYMENT_SAMPLE_SECONDS, from the inference log (deployments/gateway/models.InferenceRecord), and
how many requests its servers had waiting, from their own /metrics.

Beat runs `take_samples` every interval. The gateway seals its records up to a minute late (GATEWAY_FLUSH_SECONDS,
the beat backstop), so each run writes the interval that just ended and writes the one before again: a record
sealed late still lands in its sample. The queue is a reading of now, so it is kept on the newest interval only.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import requests
from django.conf import settings
from django.db.models import Q
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from deployments.gateway.models import InferenceRecord
from deployments.gateway.routing import upstreams
from deployments.models import Deployment
from deployments.monitoring.models import DeploymentSample

logger = logging.getLogger(__name__)

QUEUE_METRICS = ("tgi_queue_size", "vllm:num_requests_waiting")  # TGI's router, vLLM's engine
METRICS_TIMEOUT_S = 3.0
RECOMPUTED = 2  # intervals written at each run: the one that ended and the one before


def interval_seconds() -> int:
    return max(1, int(settings.DEPLOYMENT_SAMPLE_SECONDS))


def interval_start(moment: datetime, seconds: int) -> datetime:
    """The start of the interval of `seconds` that holds `moment` (intervals begin at multiples of it since
    the epoch, so every process agrees on them)."""
    stamp = int(moment.timestamp())
    return datetime.fromtimestamp(stamp - stamp % seconds, tz=UTC)


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) of the values, linearly interpolated between closest ranks; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def figures(records: list[dict], seconds: int) -> dict:
    """One interval's sample fields from its records (InferenceRecord values: status, tokens, ttft_ms,
    duration_ms). Errors are answers of 400 or more, as the usage pages count them; tokens/s is the completion
    tokens the deployment generated per second of the interval."""
    durations = [float(r["duration_ms"]) for r in records if r["duration_ms"] is not None]
    first_tokens = [float(r["ttft_ms"]) for r in records if r["ttft_ms"] is not None]
    completion = sum(int(r["completion_tokens"] or 0) for r in records)
    p50, p95, ttft = percentile(durations, 50), percentile(durations, 95), percentile(first_tokens, 50)
    return {
        "requests": len(records),
        "errors": sum(1 for r in records if int(r["status"] or 0) >= 400),
        "prompt_tokens": sum(int(r["prompt_tokens"] or 0) for r in records),
        "completion_tokens": completion,
        "tokens_per_s": round(completion / seconds, 3) if records else None,
        "latency_p50_ms": round(p50, 1) if p50 is not None else None,
        "latency_p95_ms": round(p95, 1) if p95 is not None else None,
        "ttft_p50_ms": round(ttft, 1) if ttft is not None else None,
    }


def queue_of(deployment: Deployment) -> float | None:
    """The requests waiting in the deployment's servers (its own and its running replicas'), summed, read from
    each server's /metrics the way the gateway reaches it (endpoint and server key); None when no server
    answered with a queue gauge."""
    total, read = 0.0, False
    for server in upstreams(deployment):
        headers = {"Authorization": f"Bearer {server.key}"} if server.key else {}
        try:
            response = requests.get(f"{server.url}/metrics", headers=headers, timeout=METRICS_TIMEOUT_S)
            response.raise_for_status()
            families = list(text_string_to_metric_families(response.text))
        except (requests.RequestException, ValueError) as error:
            logger.info("queue of %s at %s not read: %s", deployment.name, server.label, error)
            continue
        for family in families:
            if family.name in QUEUE_METRICS:
                total += sum(sample.value for sample in family.samples)
                read = True
    return total if read else None


def take_samples(now: datetime | None = None) -> int:
    """Write the samples of the interval that just ended (and the one before it again) for every deployment that
    was called in them or is running; returns the samples written."""
    seconds = interval_seconds()
    current = interval_start(now or timezone.now(), seconds)
    newest = current - timedelta(seconds=seconds)
    oldest = current - timedelta(seconds=seconds * RECOMPUTED)
    records = InferenceRecord.objects.filter(
        started_at__gte=oldest, started_at__lt=current, deployment_id__isnull=False
    ).values("deployment_id", "started_at", "status", "prompt_tokens", "completion_tokens", "ttft_ms", "duration_ms")
    grouped: dict[tuple[int, datetime], list[dict]] = {}
    for record in records:
        grouped.setdefault((record["deployment_id"], interval_start(record["started_at"], seconds)), []).append(record)
    called = {deployment_id for deployment_id, _at in grouped}
    deployments = Deployment.objects.filter(Q(pk__in=called) | Q(state=Deployment.State.RUNNING))
    written = 0
    for deployment in deployments.select_related("host"):
        queue = queue_of(deployment) if deployment.state == Deployment.State.RUNNING else None
        for step in range(RECOMPUTED):
            at = newest - timedelta(seconds=seconds * step)
            values = figures(grouped.get((deployment.pk, at), []), seconds)
            if step == 0:
                values["queue"] = queue
            elif not grouped.get((deployment.pk, at)):
                continue  # nothing sealed late for it: the earlier run's row stands as it was
            DeploymentSample.objects.update_or_create(deployment=deployment, resolution=seconds, at=at, defaults=values)
            written += 1
    return written

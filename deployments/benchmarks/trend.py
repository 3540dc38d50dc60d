"""A deployment's benchmark figures over time: each finished run's heaviest step (the highest concurrency or rate
of its sweep, where a regression shows first), oldest first, for the deployment page's chart and the API."""

from __future__ import annotations

from typing import Any

from deployments.benchmarks.models import BenchmarkRun, BenchmarkStep
from deployments.models import Deployment

TREND_MAX = 200


def heaviest_step(steps) -> BenchmarkStep | None:
    """The step of the sweep's highest load: the largest concurrency, else the largest rate, the later step on a
    tie. A schedule repeats one workload, so this is the same level run after run."""
    steps = list(steps)
    if not steps:
        return None
    return max(steps, key=lambda step: (step.concurrency or 0, step.rate or 0.0, step.index))


def trend(deployment: Deployment, limit: int = 30) -> list[dict[str, Any]]:
    """The deployment's last `limit` succeeded runs, oldest first: when each finished, the spec version it ran at,
    and its heaviest step's output tokens/s, TTFT p99 and end-to-end p99; has_errors marks a step with failed
    requests (its latencies are those of the successful streams only). Callers check view on the deployment."""
    limit = max(1, min(int(limit), TREND_MAX))
    runs = list(
        BenchmarkRun.objects.filter(
            deployment=deployment, state=BenchmarkRun.State.SUCCEEDED, finished_at__isnull=False
        )
        .select_related("spec")
        .prefetch_related("steps")
        .order_by("-finished_at", "-id")[:limit]
    )
    rows = []
    for run in reversed(runs):
        step = heaviest_step(run.steps.all())
        rows.append(
            {
                "run": run.pk,
                "finished_at": run.finished_at,
                "spec_version": run.spec.version if run.spec else None,
                "concurrency": step.concurrency if step else None,
                "rate": step.rate if step else None,
                "output_tokens_per_s": step.output_tokens_per_s if step else None,
                "ttft_ms_p99": step.ttft_ms_p99 if step else None,
                "e2e_ms_p99": step.e2e_ms_p99 if step else None,
                "has_errors": step.has_errors if step else False,
                "scheduled": run.schedule_id is not None,
            }
        )
    return rows

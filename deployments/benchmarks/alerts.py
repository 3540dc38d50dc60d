"""Drop alerts of scheduled benchmarks: when a scheduled run succeeds, its heaviest step is compared with the median
of the schedule's previous up-to-7 successful runs; output tokens/s falling, or TTFT p99 rising, by more than the
schedule's drop_percent raises a BenchmarkAlert (audited as benchmark.alert_raised, by the system). Acknowledging
one needs use_deployment on its deployment.

Errors: a step with failed requests is marked, never averaged in silently. So a previous run whose heaviest step had
errors is no baseline for throughput or latency (its latencies are the successful streams' only); the new run is
compared as measured (its tokens/s is what callers got, failures included), and failed requests at the heaviest step
where the baseline runs had none raise their own alert (figure `requests_failed`, the failed share as the change):
a server that starts refusing under load has regressed even when the requests that got through were fast."""

from __future__ import annotations

import logging
from statistics import median

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

import audit
from console import roles
from console.errors import ApplicationError
from console.permissions import require, restrict
from deployments.benchmarks.models import BenchmarkAlert, BenchmarkRun
from deployments.benchmarks.trend import heaviest_step
from deployments.models import Deployment

logger = logging.getLogger(__name__)

BASELINE_RUNS = 7
# figure -> +1 where a rise is the regression (latency), -1 where a fall is (throughput).
FIGURES = {"output_tokens_per_s": -1, "ttft_ms_p99": +1}
ERRORS_FIGURE = "requests_failed"
FIGURE_LABELS = {
    "output_tokens_per_s": gettext_lazy("output tokens/s"),
    "ttft_ms_p99": gettext_lazy("TTFT p99 (ms)"),
    ERRORS_FIGURE: gettext_lazy("failed requests"),
}


def _previous_steps(run: BenchmarkRun) -> list:
    """The heaviest steps of the schedule's up-to-7 successful runs that finished before this one, newest first."""
    runs = (
        BenchmarkRun.objects.filter(
            schedule_id=run.schedule_id, state=BenchmarkRun.State.SUCCEEDED, finished_at__isnull=False
        )
        .exclude(pk=run.pk)
        .filter(finished_at__lte=run.finished_at)
        .prefetch_related("steps")
        .order_by("-finished_at", "-id")[:BASELINE_RUNS]
    )
    return [step for step in (heaviest_step(r.steps.all()) for r in runs) if step is not None]


def _raise(run: BenchmarkRun, figure: str, value: float, baseline: float, change: float) -> BenchmarkAlert:
    alert = BenchmarkAlert.objects.create(
        deployment=run.deployment,
        schedule_id=run.schedule_id,
        run=run,
        figure=figure,
        value=value,
        baseline=baseline,
        change_percent=round(change, 2),
    )
    audit.record(
        action="benchmark.alert_raised",
        actor=None,
        actor_name="system",
        target=alert,
        detail={
            "deployment": run.deployment.name,
            "run": run.pk,
            "schedule": run.schedule_id,
            "figure": figure,
            "value": value,
            "baseline": baseline,
            "change_percent": alert.change_percent,
        },
    )
    return alert


def _figure_alerts(run: BenchmarkRun, step, previous: list, threshold: float) -> list[BenchmarkAlert]:
    alerts = []
    clean = [p for p in previous if not p.has_errors]
    for figure, worse in FIGURES.items():
        value = getattr(step, figure)
        history = [getattr(p, figure) for p in clean if getattr(p, figure) is not None]
        if value is None or not history:
            continue
        baseline = float(median(history))
        if baseline <= 0:
            continue
        change = (value - baseline) / baseline * 100
        if change * worse > threshold:
            alerts.append(_raise(run, figure, value, baseline, change))
    return alerts


def check_drop(run: BenchmarkRun) -> list[BenchmarkAlert]:
    """Compare a finished scheduled run with its schedule's earlier runs; the alerts raised (none for a run that did
    not succeed, is not scheduled, or has no earlier run to compare with). Called as the run is closed: a fault here
    is logged and leaves the run closed, never open."""
    if run.schedule_id is None or run.state != BenchmarkRun.State.SUCCEEDED or run.finished_at is None:
        return []
    try:
        with transaction.atomic():
            return _check(run)
    except Exception:
        logger.exception("benchmark %s: the drop check failed", run.pk)
        return []


def _check(run: BenchmarkRun) -> list[BenchmarkAlert]:
    step = heaviest_step(run.steps.all())
    schedule = run.schedule
    if step is None or schedule is None:
        return []
    previous = _previous_steps(run)
    if not previous:
        return []
    alerts = _figure_alerts(run, step, previous, schedule.drop_percent)
    if step.has_errors and median(p.requests_failed for p in previous) == 0:
        share = step.requests_failed / step.requests * 100 if step.requests else 100.0
        alerts.append(_raise(run, ERRORS_FIGURE, float(step.requests_failed), 0.0, share))
    return alerts


def alert_list(*, user, deployment: Deployment | None = None, open_only: bool = False) -> QuerySet[BenchmarkAlert]:
    """The alerts of the deployments the user may view, newest first."""
    visible = restrict(Deployment.objects.all(), user, roles.VIEW).values("pk")
    alerts = BenchmarkAlert.objects.filter(deployment__in=visible).select_related(
        "deployment", "run", "run__spec", "acknowledged_by"
    )
    if deployment is not None:
        alerts = alerts.filter(deployment=deployment)
    if open_only:
        alerts = alerts.filter(acknowledged_at__isnull=True)
    return alerts


def figure_label(figure: str) -> str:
    return str(FIGURE_LABELS.get(figure, figure))


@transaction.atomic
def alert_acknowledge(*, actor, alert: BenchmarkAlert) -> BenchmarkAlert:
    """Mark an alert seen (it leaves the open list); needs use_deployment on its deployment; audited."""
    require(actor, roles.USE_DEPLOYMENT, alert.deployment)
    alert = BenchmarkAlert.objects.select_for_update(of=("self",)).select_related("deployment").get(pk=alert.pk)
    if alert.acknowledged_at is not None:
        raise ApplicationError(_("This alert was already acknowledged."))
    alert.acknowledged_at, alert.acknowledged_by = timezone.now(), actor
    alert.save(update_fields=["acknowledged_at", "acknowledged_by"])
    audit.record(
        action="benchmark.alert_acknowledged",
        actor=actor,
        target=alert,
        detail={"deployment": alert.deployment.name, "run": alert.run_id, "figure": alert.figure},
    )
    return alert

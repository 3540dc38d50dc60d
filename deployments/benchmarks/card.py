"""What the deployment page's Benchmarks card shows a user: the open drop alerts, the trend of the deployment's runs,
its schedules, a few recent runs, and which buttons they get (use_deployment: start, schedule, acknowledge)."""

from __future__ import annotations

from typing import Any

from console import roles
from console.permissions import can
from deployments.benchmarks import alerts
from deployments.benchmarks.models import BenchmarkRun, BenchmarkSchedule
from deployments.benchmarks.schedule_forms import ScheduleForm
from deployments.benchmarks.trend import trend
from deployments.models import Deployment

RECENT_RUNS = 5
OPEN_ALERTS_SHOWN = 10


def card_context(user, deployment: Deployment, schedule_form: ScheduleForm | None = None) -> dict[str, Any]:
    """The card's context; the caller has checked that the user may view the deployment. `schedule_form`: one
    posted back with its errors, shown instead of an empty one."""
    can_use = can(user, roles.USE_DEPLOYMENT, deployment)
    open_alerts = list(alerts.alert_list(user=user, deployment=deployment, open_only=True)[:OPEN_ALERTS_SHOWN])
    for alert in open_alerts:
        alert.figure_label = alerts.figure_label(alert.figure)
    points = trend(deployment)
    return {
        "deployment": deployment,
        "can_use": can_use,
        "open_alerts": open_alerts,
        "open_alert_count": alerts.alert_list(user=user, deployment=deployment, open_only=True).count(),
        "trend": [{**point, "finished_at": point["finished_at"].isoformat()} for point in points],
        "schedules": list(BenchmarkSchedule.objects.filter(deployment=deployment).select_related("created_by")),
        "recent_runs": list(
            BenchmarkRun.objects.filter(deployment=deployment)
            .select_related("spec")
            .order_by("-created_at", "-id")[:RECENT_RUNS]
        ),
        "schedule_form": (schedule_form or ScheduleForm(deployment=deployment)) if can_use else None,
    }

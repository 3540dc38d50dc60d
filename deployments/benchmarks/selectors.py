"""Which benchmark runs a user sees: those of the deployments they may view."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from console import roles
from console.permissions import require, restrict
from deployments.benchmarks.models import BenchmarkRun
from deployments.models import Deployment


def benchmark_list(*, user) -> QuerySet[BenchmarkRun]:
    visible = restrict(Deployment.objects.all(), user, roles.VIEW).values("pk")
    return BenchmarkRun.objects.filter(deployment__in=visible).select_related("deployment", "spec", "created_by")


def benchmark_get(*, user, pk: int) -> BenchmarkRun:
    """The run, or ObjectHidden (a 404) when the user may not view its deployment (or there is none)."""
    run = BenchmarkRun.objects.select_related("deployment", "spec", "created_by").filter(pk=pk).first()
    if run is None:
        raise Http404
    require(user, roles.VIEW, run.deployment)
    return run

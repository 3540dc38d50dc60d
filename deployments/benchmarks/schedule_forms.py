"""The deployment page's small form to repeat a benchmark: which workload (the deployment's preset or an earlier
run's), how often, and the drop that raises an alert. Ranges are the schedule service's (schedules.py)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from console.forms import StyledMixin
from deployments.benchmarks.models import BenchmarkRun
from deployments.benchmarks.presets import preset_for
from deployments.benchmarks.schedules import DROP_PERCENT, INTERVAL_HOURS
from deployments.models import Deployment

PRESET = "preset"
RUN_CHOICES = 10


def workload_choices(deployment: Deployment) -> list[tuple[str, str]]:
    """The preset, then the workloads of the deployment's last few runs."""
    runs = BenchmarkRun.objects.filter(deployment=deployment).order_by("-created_at", "-id")[:RUN_CHOICES]
    choices = [(PRESET, str(_("The preset for this deployment")))]
    for run in runs:
        levels = ", ".join(f"{level:g}" for level in run.workload.get("levels") or [])
        label = _("As run #%(id)d (%(sweep)s %(levels)s)") % {
            "id": run.pk,
            "sweep": run.workload.get("sweep", ""),
            "levels": levels,
        }
        choices.append((str(run.pk), label))
    return choices


class ScheduleForm(StyledMixin, forms.Form):
    small = True
    source = forms.ChoiceField(label=_("Workload"))
    interval_hours = forms.IntegerField(
        label=_("Every (hours)"), initial=24, min_value=INTERVAL_HOURS[0], max_value=INTERVAL_HOURS[1]
    )
    drop_percent = forms.FloatField(
        label=_("Alert on a drop of (%)"), initial=10, min_value=DROP_PERCENT[0], max_value=DROP_PERCENT[1]
    )
    note = forms.CharField(label=_("Note"), required=False, max_length=500)

    def __init__(self, *args, deployment: Deployment, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deployment = deployment
        self.fields["source"].choices = workload_choices(deployment)

    def workload(self) -> dict[str, Any]:
        source = self.cleaned_data["source"]
        if source == PRESET:
            return preset_for(self.deployment)
        return BenchmarkRun.objects.get(pk=int(source), deployment=self.deployment).workload

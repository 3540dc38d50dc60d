"""The deployment page's benchmark actions (POST only, back to the deployment page with a message): add a schedule,
enable or disable one, delete one, acknowledge a drop alert. Each needs `view` to find the thing (a hidden one is a
404) and the service's use_deployment (a 403); the rules live in schedules.py and alerts.py."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views import View

from console import roles
from console.errors import ApplicationError
from console.mixins import ConsoleViewMixin
from console.permissions import require
from deployments.benchmarks import alerts, schedules
from deployments.benchmarks.models import BenchmarkAlert, BenchmarkSchedule
from deployments.benchmarks.schedule_forms import ScheduleForm
from deployments.models import Deployment


def _visible(user, model, pk):
    """The schedule or alert if the user may view its deployment (a hidden one is an audited 404)."""
    obj = get_object_or_404(model.objects.select_related("deployment"), pk=pk)
    require(user, roles.VIEW, obj.deployment)
    return obj


def _back(deployment_id: int):
    return redirect(reverse("deployment-detail", args=[deployment_id]) + "#benchmarks")


class _BenchmarkActionView(ConsoleViewMixin, View):
    permission_action = roles.VIEW

    def act(self, request, pk) -> tuple[int, str]:
        """The deployment to go back to and what was done, in words."""
        raise NotImplementedError

    def post(self, request, pk):
        try:
            deployment_id, message = self.act(request, pk)
        except ApplicationError as error:
            messages.error(request, error.message)
            deployment_id = self.deployment_id
        else:
            messages.success(request, message)
        return _back(deployment_id)


class ScheduleCreateView(_BenchmarkActionView):
    def act(self, request, pk):
        deployment = get_object_or_404(Deployment, pk=pk)
        require(request.user, roles.VIEW, deployment)
        self.deployment_id = deployment.pk
        form = ScheduleForm(request.POST, deployment=deployment)
        if not form.is_valid():
            first = next(iter(form.errors.items()))
            label = form.fields[first[0]].label if first[0] in form.fields else ""
            raise ApplicationError(f"{label}: {first[1][0]}" if label else first[1][0])
        data = form.cleaned_data
        schedule = schedules.schedule_create(
            actor=request.user,
            deployment=deployment,
            workload=form.workload(),
            interval_hours=data["interval_hours"],
            drop_percent=data["drop_percent"],
            note=data.get("note", ""),
        )
        return deployment.pk, _("Benchmark scheduled every %(hours)d hours; the first run starts within a minute.") % {
            "hours": schedule.interval_hours
        }


class ScheduleToggleView(_BenchmarkActionView):
    def act(self, request, pk):
        schedule = _visible(request.user, BenchmarkSchedule, pk)
        self.deployment_id = schedule.deployment_id
        enable = request.POST.get("enabled") == "1"
        schedules.schedule_update(actor=request.user, schedule=schedule, enabled=enable)
        return schedule.deployment_id, (_("Schedule enabled; it runs as you.") if enable else _("Schedule disabled."))


class ScheduleDeleteView(_BenchmarkActionView):
    def act(self, request, pk):
        schedule = _visible(request.user, BenchmarkSchedule, pk)
        self.deployment_id = schedule.deployment_id
        schedules.schedule_delete(actor=request.user, schedule=schedule)
        return schedule.deployment_id, _("Schedule deleted; its runs stay.")


class AlertAcknowledgeView(_BenchmarkActionView):
    def act(self, request, pk):
        alert = _visible(request.user, BenchmarkAlert, pk)
        self.deployment_id = alert.deployment_id
        alerts.alert_acknowledge(actor=request.user, alert=alert)
        return alert.deployment_id, _("Alert acknowledged.")

"""The deployment page's benchmark actions (POST only, back to the deployment page with a message): add a schedule,
enable or disable one, delete one, acknowledge a drop alert; a refused schedule form is the deployment page again
with the form's errors and a 400. Each needs `view` to find the thing (a hidden one is a
404) and the service's use_deployment (a 403); the rules live in schedules.py and alerts.py."""

from __future__ import annotations

from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views import View

from console import roles
from console.errors import ApplicationError
from console.forms import apply_error
from console.mixins import ConsoleViewMixin
from console.permissions import require
from deployments.benchmarks import alerts, schedules
from deployments.benchmarks.models import BenchmarkAlert, BenchmarkSchedule
from deployments.benchmarks.schedule_forms import ScheduleForm
from deployments.models import Deployment
from deployments.serving.views import DeploymentDetailView


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


class ScheduleCreateView(ConsoleViewMixin, View):
    """A refused form (a value out of range, text no field can hold) comes back on the deployment page with its
    errors and a 400, as the other pages' forms do; a schedule added goes back to the page with a message."""

    permission_action = roles.VIEW

    def post(self, request, pk):
        deployment = get_object_or_404(Deployment, pk=pk)
        require(request.user, roles.VIEW, deployment)
        form = ScheduleForm(request.POST, deployment=deployment)
        if form.is_valid():
            data = form.cleaned_data
            try:
                schedule = schedules.schedule_create(
                    actor=request.user,
                    deployment=deployment,
                    workload=form.workload(),
                    interval_hours=data["interval_hours"],
                    drop_percent=data["drop_percent"],
                    note=data.get("note", ""),
                )
            except ApplicationError as error:
                apply_error(form, error)
            else:
                message = _("Benchmark scheduled every %(hours)d hours; the first run starts within a minute.")
                messages.success(request, message % {"hours": schedule.interval_hours})
                return _back(deployment.pk)
        page = DeploymentDetailView()
        page.setup(request, pk=deployment.pk)
        return page.get(request, deployment.pk, status=400, schedule_form=form)


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

"""The fleet page and the charts' JSON (fleet, a host's GPUs, a deployment), each checked as the page it serves:
the fleet needs `view`; a host's or a deployment's charts, that the reader may view that host or deployment."""

from __future__ import annotations

from django.http import JsonResponse
from django.shortcuts import render
from django.views import View

from console import roles
from console.mixins import ConsoleViewMixin
from deployments.models import Deployment, Host
from deployments.monitoring import charts
from deployments.monitoring.fleet import fleet_overview, visible_gpus


def fleet_context(user) -> dict:
    """What the fleet sections need (the fleet page and the admins' dashboard render the same)."""
    return {"fleet": fleet_overview(user)}


def _figure_response(request, build) -> JsonResponse:
    try:
        window = charts.window_of(request.GET.get("window"))
    except ValueError as error:
        return JsonResponse({"window": [str(error)]}, status=400)
    return JsonResponse(build(window).as_dict())


class FleetView(ConsoleViewMixin, View):
    permission_action = roles.VIEW

    def get(self, request):
        return render(request, "monitoring/fleet.html", fleet_context(request.user))


class FleetChartsView(ConsoleViewMixin, View):
    permission_action = roles.VIEW

    def get(self, request):
        return _figure_response(request, lambda window: charts.fleet_gpu_charts(visible_gpus(request.user), window))


class HostChartsView(ConsoleViewMixin, View):
    permission_action = roles.VIEW
    queryset = Host.objects.all()

    def get(self, request, pk):
        host = self.visible_object(pk)
        gpus = list(host.gpus.order_by("index"))
        return _figure_response(request, lambda window: charts.host_gpu_charts(gpus, window))


class DeploymentChartsView(ConsoleViewMixin, View):
    permission_action = roles.VIEW
    queryset = Deployment.objects.all()

    def get(self, request, pk):
        deployment = self.visible_object(pk)
        return _figure_response(request, lambda window: charts.deployment_charts(deployment, window))

"""The charts' series over the API, as the pages draw them: GET /api/v1/charts/fleet/, /api/v1/charts/hosts/<id>/
and /api/v1/charts/deployments/<id>/, each with ?window=1h|24h|7d|30d. The same rule as the pages: `view`, and for a
host or a deployment, that the caller may view it (else 404)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from console import roles
from console.permissions import reachable, require, require_list, restrict
from deployments.models import Deployment, Host
from deployments.monitoring import charts
from deployments.monitoring.fleet import visible_gpus

WINDOW = OpenApiParameter("window", OpenApiTypes.STR, enum=list(charts.WINDOWS), default=charts.DEFAULT_WINDOW)
ID = OpenApiParameter("pk", OpenApiTypes.INT, OpenApiParameter.PATH, description="The host's or deployment's id.")
SERIES = inline_serializer(
    "ChartSeries",
    {
        "label": serializers.CharField(),
        "values": serializers.ListField(child=serializers.FloatField(allow_null=True)),
    },
)
FIGURE = inline_serializer(
    "ChartFigure",
    {
        "window": serializers.CharField(),
        "step": serializers.IntegerField(help_text="Seconds between points."),
        "start": serializers.IntegerField(help_text="Unix seconds."),
        "end": serializers.IntegerField(help_text="Unix seconds (exclusive)."),
        "source": serializers.ChoiceField(choices=[charts.CONSOLE, charts.PROMETHEUS]),
        "source_label": serializers.CharField(),
        "note": serializers.CharField(help_text="Why Prometheus was not used, when it is configured."),
        "x": serializers.ListField(child=serializers.IntegerField(), help_text="Each point's start, Unix seconds."),
        "charts": inline_serializer(
            "Chart",
            {"key": serializers.CharField(), "unit": serializers.CharField(), "series": SERIES},
            many=True,
        ),
        "points": serializers.IntegerField(help_text="Values measured (not null) over every series."),
    },
)


def _window(request) -> charts.Window:
    try:
        return charts.window_of(request.query_params.get("window"))
    except ValueError as error:
        raise ValidationError({"window": [str(error)]}) from None


class ChartViewSet(viewsets.ViewSet):
    """Chart series of the fleet, a host's GPUs and a deployment's serving figures."""

    @extend_schema(parameters=[WINDOW], responses=FIGURE)
    @action(detail=False, methods=["get"])
    def fleet(self, request):
        require(request.user, roles.VIEW)
        window = _window(request)
        return Response(charts.fleet_gpu_charts(visible_gpus(request.user), window).as_dict())

    @extend_schema(parameters=[WINDOW, ID], responses=FIGURE)
    @action(detail=False, methods=["get"], url_path=r"hosts/(?P<pk>[0-9]+)")
    def host(self, request, pk: str):
        require_list(request.user, roles.VIEW, Host)
        host = reachable(restrict(Host.objects.all(), request.user, roles.VIEW), request.user, roles.VIEW, pk)
        window = _window(request)
        return Response(charts.host_gpu_charts(list(host.gpus.order_by("index")), window).as_dict())

    @extend_schema(parameters=[WINDOW, ID], responses=FIGURE)
    @action(detail=False, methods=["get"], url_path=r"deployments/(?P<pk>[0-9]+)")
    def deployment(self, request, pk: str):
        require_list(request.user, roles.VIEW, Deployment)
        queryset = restrict(Deployment.objects.all(), request.user, roles.VIEW)
        deployment = reachable(queryset, request.user, roles.VIEW, pk)
        window = _window(request)
        return Response(charts.deployment_charts(deployment, window).as_dict())

"""Benchmark schedules, their drop alerts and a deployment's benchmark trend, through the API. Reading needs `view`
and shows only the deployments the caller may view; creating, changing or deleting a schedule and acknowledging an
alert need use_deployment on its deployment (403 otherwise; 400 naming the field for a value the rules refuse)."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from console import roles
from console.permissions import require, restrict
from deployments.benchmarks import alerts, schedules, trend
from deployments.benchmarks.models import BenchmarkAlert, BenchmarkSchedule
from deployments.benchmarks.serializers import PK_MAX
from deployments.models import Deployment


class BenchmarkScheduleSerializer(serializers.ModelSerializer):
    deployment_name = serializers.CharField(source="deployment.name", read_only=True)
    runs_as = serializers.CharField(source="created_by.username", default=None, read_only=True)
    last_error = serializers.CharField(source="last_error_display", read_only=True)  # stored in English

    class Meta:
        model = BenchmarkSchedule
        fields = [
            "id", "deployment", "deployment_name", "runs_as", "workload", "note", "interval_hours", "drop_percent",
            "enabled", "next_run_at", "last_error", "created_at",
        ]  # fmt: skip
        read_only_fields = fields


class ScheduleCreateSerializer(serializers.Serializer):
    deployment = serializers.IntegerField(min_value=1, max_value=PK_MAX)
    workload = serializers.JSONField(help_text="as for POST /api/v1/benchmarks/")
    interval_hours = serializers.IntegerField(default=24, help_text="1 to 720")
    drop_percent = serializers.FloatField(default=10.0, help_text="1 to 90")
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    first_run_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class ScheduleUpdateSerializer(serializers.Serializer):
    enabled = serializers.BooleanField(required=False)
    interval_hours = serializers.IntegerField(required=False)
    drop_percent = serializers.FloatField(required=False)
    note = serializers.CharField(max_length=500, required=False, allow_blank=True)


class BenchmarkAlertSerializer(serializers.ModelSerializer):
    deployment_name = serializers.CharField(source="deployment.name", read_only=True)
    spec_version = serializers.IntegerField(source="run.spec.version", default=None, read_only=True)
    acknowledged_by = serializers.CharField(source="acknowledged_by.username", default=None, read_only=True)

    class Meta:
        model = BenchmarkAlert
        fields = [
            "id", "deployment", "deployment_name", "schedule", "run", "spec_version", "figure", "value", "baseline",
            "change_percent", "created_at", "acknowledged_at", "acknowledged_by",
        ]  # fmt: skip
        read_only_fields = fields


class TrendPointSerializer(serializers.Serializer):
    run = serializers.IntegerField()
    finished_at = serializers.DateTimeField()
    spec_version = serializers.IntegerField(allow_null=True)
    concurrency = serializers.IntegerField(allow_null=True)
    rate = serializers.FloatField(allow_null=True)
    output_tokens_per_s = serializers.FloatField(allow_null=True)
    ttft_ms_p99 = serializers.FloatField(allow_null=True)
    e2e_ms_p99 = serializers.FloatField(allow_null=True)
    has_errors = serializers.BooleanField()
    scheduled = serializers.BooleanField()


def _is_pk(value) -> bool:
    return str(value).isdigit() and 0 < int(value) <= PK_MAX


def _visible_deployments(user):
    return restrict(Deployment.objects.all(), user, roles.VIEW)


def _deployment_param(request, *, required: bool) -> Deployment | None:
    """?deployment=ID, visible to the caller (404 otherwise); None when absent and not required."""
    value = request.query_params.get("deployment")
    if value is None and not required:
        return None
    if value is None:
        raise serializers.ValidationError({"deployment": ["This query parameter is required."]})
    if not _is_pk(value):
        raise Http404
    deployment = Deployment.objects.filter(pk=int(value)).first()
    if deployment is None:
        raise Http404
    require(request.user, roles.VIEW, deployment)
    return deployment


class _ViewRequired(viewsets.GenericViewSet):
    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        if request.method != "OPTIONS":
            require(request.user, roles.VIEW)


class BenchmarkScheduleViewSet(_ViewRequired):
    queryset = BenchmarkSchedule.objects.none()
    serializer_class = BenchmarkScheduleSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return BenchmarkSchedule.objects.none()
        visible = _visible_deployments(self.request.user).values("pk")
        found = BenchmarkSchedule.objects.filter(deployment__in=visible).select_related("deployment", "created_by")
        deployment = self.request.query_params.get("deployment")
        if deployment is not None:
            found = found.filter(deployment_id=int(deployment)) if _is_pk(deployment) else found.none()
        return found

    def _schedule(self, pk) -> BenchmarkSchedule:
        if not _is_pk(pk):
            raise Http404
        schedule = BenchmarkSchedule.objects.select_related("deployment", "created_by").filter(pk=int(pk)).first()
        if schedule is None:
            raise Http404
        require(self.request.user, roles.VIEW, schedule.deployment)
        return schedule

    @extend_schema(parameters=[OpenApiParameter("deployment", int, description="Only this deployment's schedules.")])
    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(BenchmarkScheduleSerializer(page, many=True).data)

    def retrieve(self, request, pk=None):
        return Response(BenchmarkScheduleSerializer(self._schedule(pk)).data)

    @extend_schema(request=ScheduleCreateSerializer, responses={201: BenchmarkScheduleSerializer})
    def create(self, request):
        """Repeat a benchmark every interval_hours (1-720) and alert on a drop beyond drop_percent (1-90); the first
        run is at first_run_at, else within the minute. 404 for a deployment the caller cannot see, 403 where they
        may see but not use it."""
        serializer = ScheduleCreateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        deployment = Deployment.objects.filter(pk=data["deployment"]).first()
        if deployment is None:
            raise Http404
        schedule = schedules.schedule_create(actor=request.user, **{**data, "deployment": deployment})
        return Response(BenchmarkScheduleSerializer(schedule).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ScheduleUpdateSerializer, responses={200: BenchmarkScheduleSerializer})
    def partial_update(self, request, pk=None):
        """Enable or disable it (whoever enables it becomes the user it runs as), or change interval, threshold,
        note."""
        schedule = self._schedule(pk)
        serializer = ScheduleUpdateSerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        schedule = schedules.schedule_update(actor=request.user, schedule=schedule, **serializer.validated_data)
        return Response(BenchmarkScheduleSerializer(schedule).data)

    def destroy(self, request, pk=None):
        schedules.schedule_delete(actor=request.user, schedule=self._schedule(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


class BenchmarkAlertViewSet(_ViewRequired):
    queryset = BenchmarkAlert.objects.none()
    serializer_class = BenchmarkAlertSerializer

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return BenchmarkAlert.objects.none()
        deployment = self.request.query_params.get("deployment")
        found = alerts.alert_list(
            user=self.request.user, open_only=self.request.query_params.get("open") in {"1", "true"}
        )
        if deployment is not None:
            found = found.filter(deployment_id=int(deployment)) if _is_pk(deployment) else found.none()
        return found

    @extend_schema(
        parameters=[
            OpenApiParameter("deployment", int, description="Only this deployment's alerts."),
            OpenApiParameter("open", int, description="1: only those not acknowledged yet."),
        ]
    )
    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(BenchmarkAlertSerializer(page, many=True).data)

    def retrieve(self, request, pk=None):
        return Response(BenchmarkAlertSerializer(self._alert(pk)).data)

    def _alert(self, pk) -> BenchmarkAlert:
        if not _is_pk(pk):
            raise Http404
        alert = BenchmarkAlert.objects.select_related("deployment", "run__spec").filter(pk=int(pk)).first()
        if alert is None:
            raise Http404
        require(self.request.user, roles.VIEW, alert.deployment)
        return alert

    @extend_schema(request=None, responses={200: BenchmarkAlertSerializer})
    @action(detail=True, methods=["post"])
    def acknowledge(self, request, pk=None):
        """Mark the alert seen (use_deployment on its deployment); 400 if it already was."""
        alert = alerts.alert_acknowledge(actor=request.user, alert=self._alert(pk))
        return Response(BenchmarkAlertSerializer(alert).data)


class BenchmarkTrendViewSet(_ViewRequired):
    queryset = Deployment.objects.none()
    serializer_class = TrendPointSerializer
    pagination_class = None

    @extend_schema(
        parameters=[
            OpenApiParameter("deployment", int, required=True),
            OpenApiParameter("limit", int, description="The last N succeeded runs (default 30, at most 200)."),
        ],
        responses={200: TrendPointSerializer(many=True)},
    )
    def list(self, request):
        """A deployment's succeeded runs, oldest first, each by its heaviest step (the highest concurrency or
        rate): output tokens/s, TTFT p99, end-to-end p99, whether it had errors, whether a schedule started it."""
        deployment = _deployment_param(request, required=True)
        limit = request.query_params.get("limit", "30")
        if not limit.isdigit() or not 1 <= int(limit) <= trend.TREND_MAX:
            raise serializers.ValidationError({"limit": [f"1 to {trend.TREND_MAX}."]})
        return Response(TrendPointSerializer(trend.trend(deployment, limit=int(limit)), many=True).data)

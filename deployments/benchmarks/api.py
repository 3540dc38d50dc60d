"""Benchmark API: runs on deployments the caller can see (list, read with steps, export the steps as CSV or JSON),
start one (`use_deployment` on the deployment, which must be running) and cancel it. The run's log is its job's
(`/api/v1/jobs/{id}/log/`)."""

from __future__ import annotations

import csv
import io
import json

from django.http import Http404, HttpResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from console import roles
from console.permissions import require
from deployments.benchmarks import selectors, services
from deployments.benchmarks.models import BenchmarkRun
from deployments.benchmarks.serializers import (
    PK_MAX,
    STEP_FIELDS,
    BenchmarkDetailSerializer,
    BenchmarkRunSerializer,
    BenchmarkStartSerializer,
    BenchmarkStepSerializer,
)
from deployments.models import Deployment


class BenchmarkViewSet(viewsets.GenericViewSet):
    queryset = BenchmarkRun.objects.none()
    serializer_class = BenchmarkRunSerializer

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        if request.method != "OPTIONS":
            require(request.user, roles.VIEW)

    def get_serializer_class(self):
        return {"retrieve": BenchmarkDetailSerializer, "create": BenchmarkStartSerializer}.get(
            self.action, BenchmarkRunSerializer
        )

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return BenchmarkRun.objects.none()
        runs = selectors.benchmark_list(user=self.request.user)
        deployment = self.request.query_params.get("deployment")
        if deployment is not None:
            runs = runs.filter(deployment_id=int(deployment)) if _is_pk(deployment) else runs.none()
        return runs

    def _run(self, pk) -> BenchmarkRun:
        if not _is_pk(pk):
            raise Http404
        return selectors.benchmark_get(user=self.request.user, pk=int(pk))

    @extend_schema(parameters=[OpenApiParameter("deployment", int, description="Only this deployment's runs.")])
    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(BenchmarkRunSerializer(page, many=True).data)

    def retrieve(self, request, pk=None):
        return Response(BenchmarkDetailSerializer(self._run(pk)).data)

    @extend_schema(request=BenchmarkStartSerializer, responses={201: BenchmarkDetailSerializer})
    def create(self, request):
        """Start a benchmark of a running deployment: 400 naming the field for a workload the load generator would
        refuse; 404 for a deployment the caller cannot see, 403 where they may see but not use it."""
        serializer = BenchmarkStartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        deployment = Deployment.objects.filter(pk=data["deployment"]).first()
        if deployment is None:
            raise Http404
        run = services.benchmark_start(
            actor=request.user, deployment=deployment, workload=data["workload"], note=data.get("note", "")
        )
        return Response(BenchmarkDetailSerializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={202: BenchmarkDetailSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Stop the sweep; the steps already finished stay."""
        run = services.benchmark_cancel(actor=request.user, run=self._run(pk))
        return Response(BenchmarkDetailSerializer(run).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses={(200, "text/csv"): str})
    @action(detail=True, methods=["get"], url_path="export.csv")
    def export_csv(self, request, pk=None):
        """The steps, one row each, every figure a column (errors as a JSON object)."""
        run = self._run(pk)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(STEP_FIELDS)
        for step in run.steps.all():
            writer.writerow(
                [json.dumps(step.errors, sort_keys=True) if name == "errors" else _cell(getattr(step, name))
                 for name in STEP_FIELDS]
            )  # fmt: skip
        response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="benchmark-{run.pk}-steps.csv"'
        return response

    @extend_schema(responses={200: BenchmarkStepSerializer(many=True)})
    @action(detail=True, methods=["get"], url_path="export.json")
    def export_json(self, request, pk=None):
        """The run with its workload and its steps, as one JSON document to keep or compare."""
        run = self._run(pk)
        response = Response(BenchmarkDetailSerializer(run).data)
        response["Content-Disposition"] = f'attachment; filename="benchmark-{run.pk}.json"'
        return response


def _is_pk(value) -> bool:
    return str(value).isdigit() and 0 < int(value) <= PK_MAX


def _cell(value):
    if value is None:
        return ""
    return int(value) if isinstance(value, bool) else value

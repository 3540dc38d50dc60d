"""Benchmark API: runs on deployments the caller can see (list, read with steps, export the steps as CSV or JSON),
start one (`use_deployment` on the deployment, which must be running) and cancel it. The run's log is its job's
(`/api/v1/jobs/{id}/log/`)."""

from __future__ import annotations

import csv
import io
import json

from django.http import Http404, HttpResponse
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from console import roles
from console.permissions import require
from deployments.benchmarks import selectors, services, tuning
from deployments.benchmarks.compare import MAX_RUNS, compare_runs
from deployments.benchmarks.models import BenchmarkRun
from deployments.benchmarks.serializers import (
    PK_MAX,
    STEP_FIELDS,
    BenchmarkDetailSerializer,
    BenchmarkRunSerializer,
    BenchmarkStartSerializer,
    BenchmarkStepSerializer,
    SuggestionApplySerializer,
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

    @extend_schema(request=None, responses={200: dict})
    @action(detail=True, methods=["get"])
    def suggestions(self, request, pk=None):
        """The spec changes the run's figures call for ({suggestions, notes, can_apply}); can_apply says whether
        this caller may apply one now (deploy and use_deployment on the deployment, the run not stale)."""
        run = self._run(pk)
        advice = tuning.run_advice(run)
        return Response(
            {
                "suggestions": [suggestion.as_dict() for suggestion in advice.suggestions],
                "notes": advice.notes,
                "can_apply": tuning.can_apply(request.user, run),
            }
        )

    @extend_schema(request=SuggestionApplySerializer, responses={201: BenchmarkDetailSerializer})
    @action(detail=True, methods=["post"])
    def apply(self, request, pk=None):
        """Apply one suggestion: a new spec version (the server restarts with it) and a re-run of the workload,
        201 with the re-run; on a production deployment an approval request, 202 with the waiting re-run (its
        `approval`). 403 without deploy on the deployment, 400 naming `rule` for an unknown or stale one."""
        run = self._run(pk)
        serializer = SuggestionApplySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rerun = tuning.suggestion_apply(actor=request.user, run=run, rule=serializer.validated_data["rule"])
        code = status.HTTP_202_ACCEPTED if rerun.approval_id else status.HTTP_201_CREATED
        return Response(BenchmarkDetailSerializer(rerun).data, status=code)

    @extend_schema(
        parameters=[OpenApiParameter("runs", str, description="2 to 6 run ids, comma-separated, the base first")],
        responses={200: dict},
    )
    @action(detail=False, methods=["get"])
    def compare(self, request):
        """The runs' steps lined up by load, each figure with its change against the first run and a verdict."""
        raw = [part.strip() for part in request.query_params.get("runs", "").split(",") if part.strip()]
        if not 2 <= len(raw) <= MAX_RUNS:
            raise ValidationError({"runs": [_("Pick 2 to %(most)s runs.") % {"most": MAX_RUNS}]})
        runs = [self._run(pk) for pk in raw]
        return Response(compare_runs(runs).as_dict())

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

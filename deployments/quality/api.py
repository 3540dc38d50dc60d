"""Quantize and evaluate API: jobs whose data the caller may see (list, read), start (`finetune`, and use of each
dataset version), cancel; the evaluation figures of an artifact. A job's log is the job's
(`/api/v1/jobs/{id}/log/`)."""

from __future__ import annotations

from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from console import roles
from console.errors import ApplicationError
from console.permissions import require, restrict
from deployments.models import DatasetVersion, EvalResult, Job, ModelArtifact
from deployments.quality import selectors, services
from deployments.quality.serializers import (
    EvalResultSerializer,
    EvaluateJobSerializer,
    EvaluateStartSerializer,
    QuantizeJobSerializer,
    QuantizeStartSerializer,
)


def _object(queryset, pk, field: str):
    found = queryset.filter(pk=pk).first() if str(pk).isdigit() else None
    if found is None:
        raise ApplicationError(f"No such {field.replace('_', ' ')}.", field=field)
    return found


def _artifact(pk, field: str) -> ModelArtifact:
    return _object(ModelArtifact.objects.select_related("repo", "host"), pk, field)


def _version(pk, field: str) -> DatasetVersion | None:
    if pk is None:
        return None
    return _object(DatasetVersion.objects.select_related("dataset"), pk, field)


class _QualityJobViewSet(viewsets.GenericViewSet):
    queryset = Job.objects.none()
    kind = ""
    read_serializer = QuantizeJobSerializer

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        if request.method != "OPTIONS":
            require(request.user, roles.VIEW)

    def get_queryset(self):
        return Job.objects.none()

    def list(self, request):
        page = self.paginate_queryset(selectors.quality_jobs(user=request.user, kind=self.kind))
        return self.get_paginated_response(self.read_serializer(page, many=True).data)

    def retrieve(self, request, pk=None):
        return Response(self.read_serializer(selectors.quality_job(request.user, pk, self.kind)).data)

    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Stop the job: its program is stopped and nothing half-made is registered."""
        job = services.quality_cancel(actor=request.user, job=selectors.quality_job(request.user, pk, self.kind))
        return Response(self.read_serializer(job).data, status=status.HTTP_202_ACCEPTED)


@extend_schema(responses=QuantizeJobSerializer)
class QuantizeViewSet(_QualityJobViewSet):
    serializer_class = QuantizeJobSerializer
    kind = Job.Kind.QUANTIZE
    read_serializer = QuantizeJobSerializer

    def get_serializer_class(self):
        return QuantizeStartSerializer if self.action == "create" else QuantizeJobSerializer

    @extend_schema(request=QuantizeStartSerializer, responses={201: QuantizeJobSerializer})
    def create(self, request):
        """Quantize a model into a new compressed-tensors artifact: 400 with the field for an unknown scheme, an
        already quantized source, a calibration version shorter than the samples, a model no GPU can hold."""
        require(request.user, roles.FINETUNE)
        serializer = QuantizeStartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        job = services.quantize_start(
            actor=request.user,
            source=_artifact(data["source"], "source"),
            options=serializer.options(),
            calibration=_version(data.get("calibration_version"), "calibration_version"),
        )
        return Response(QuantizeJobSerializer(job).data, status=status.HTTP_201_CREATED)


@extend_schema(responses=EvaluateJobSerializer)
class EvaluateViewSet(_QualityJobViewSet):
    serializer_class = EvaluateJobSerializer
    kind = Job.Kind.EVALUATE
    read_serializer = EvaluateJobSerializer

    def get_serializer_class(self):
        return EvaluateStartSerializer if self.action == "create" else EvaluateJobSerializer

    @extend_schema(request=EvaluateStartSerializer, responses={201: EvaluateJobSerializer})
    def create(self, request):
        """Evaluate one or more models on the same held-out data: perplexity (a dataset version or the shipped
        text sample) and/or accuracy on a task defined by a dataset version."""
        require(request.user, roles.FINETUNE)
        serializer = EvaluateStartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        artifacts = [_artifact(pk, "artifacts") for pk in data["artifacts"]]
        perplexity = dict(data["perplexity"]) if data.get("perplexity") is not None else None
        task = dict(data["task"]) if data.get("task") is not None else None
        perplexity_version = (
            _version(perplexity.pop("dataset_version", None), "perplexity.dataset_version")
            if (perplexity is not None)
            else None
        )
        task_version = _version(task.pop("dataset_version"), "task.dataset_version") if task is not None else None
        if perplexity is None and task is None:
            raise ApplicationError("Give perplexity, task or both.", field="perplexity")
        job = services.evaluate_start(
            actor=request.user,
            artifacts=artifacts,
            perplexity=perplexity,
            perplexity_version=perplexity_version,
            task=task,
            task_version=task_version,
        )
        return Response(EvaluateJobSerializer(job).data, status=status.HTTP_201_CREATED)


@extend_schema(parameters=[OpenApiParameter("artifact", OpenApiTypes.INT, description="Only this artifact's figures.")])
class EvalResultViewSet(viewsets.ReadOnlyModelViewSet):
    """Evaluation figures, per artifact and data identity (rows with the same data and window compare)."""

    serializer_class = EvalResultSerializer
    queryset = EvalResult.objects.none()

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        if request.method != "OPTIONS":
            require(request.user, roles.VIEW)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return EvalResult.objects.none()
        visible = restrict(ModelArtifact.objects.all(), self.request.user, roles.VIEW)
        results = EvalResult.objects.filter(artifact__in=visible).order_by("-created_at")
        wanted = self.request.query_params.get("artifact")
        if wanted is not None:
            if not wanted.isdigit():
                raise Http404
            results = results.filter(artifact_id=int(wanted))
        return results

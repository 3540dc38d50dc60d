"""Fine-tune API: runs on datasets the caller can see (list, read with checkpoints and result), start (`finetune`
and use of the dataset), the memory estimate, cancel and resume; an adapter's merge and deploy. A run's log and
curves are the job's (`/api/v1/jobs/{id}/log/`: metric lines carry the curves)."""

from __future__ import annotations

from django.http import Http404
from django.utils.translation import gettext
from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from console import roles
from console.errors import ApplicationError
from console.permissions import may_deploy_anywhere, require
from deployments.finetune import adapters, selectors, services
from deployments.finetune.serializers import (
    AdapterDeploySerializer,
    FinetuneDetailSerializer,
    FinetuneSerializer,
    FinetuneStartSerializer,
    MergeSerializer,
)
from deployments.finetune.views import finetune_job
from deployments.models import DatasetVersion, Deployment, Job, ModelArtifact
from deployments.registry.serializers import ArtifactSerializer
from deployments.serving.serializers import DeploymentSerializer


def _object(queryset, pk, field: str):
    found = queryset.filter(pk=pk).first() if str(pk).isdigit() else None
    if found is None:
        raise ApplicationError(f"No such {field.replace('_', ' ')}.", field=field)
    return found


class FinetuneViewSet(viewsets.GenericViewSet):
    queryset = Job.objects.none()
    serializer_class = FinetuneSerializer

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        if request.method != "OPTIONS":
            require(request.user, roles.VIEW)

    def get_serializer_class(self):
        return {
            "retrieve": FinetuneDetailSerializer,
            "create": FinetuneStartSerializer,
            "estimate": FinetuneStartSerializer,
        }.get(self.action, FinetuneSerializer)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Job.objects.none()
        return selectors.finetune_list(user=self.request.user)

    def _job(self, pk) -> Job:
        if not str(pk).isdigit():
            raise Http404
        return finetune_job(self.request.user, pk)

    def list(self, request):
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(FinetuneSerializer(page, many=True).data)

    def retrieve(self, request, pk=None):
        return Response(FinetuneDetailSerializer(self._job(pk)).data)

    def _inputs(self, request):
        serializer = FinetuneStartSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        base = _object(ModelArtifact.objects.select_related("repo", "host"), data["base"], "base")
        version = _object(DatasetVersion.objects.select_related("dataset"), data["dataset_version"], "dataset_version")
        return serializer, base, version

    @extend_schema(request=FinetuneStartSerializer, responses={201: FinetuneDetailSerializer})
    def create(self, request):
        """Start a fine-tune: 400 with the field for options the program would refuse or a setup that does not fit."""
        require(request.user, roles.FINETUNE)
        serializer, base, version = self._inputs(request)
        job = services.finetune_start(
            actor=request.user,
            base=base,
            version=version,
            options=serializer.options(),
            gpu_count=serializer.validated_data["gpu_count"],
        )
        return Response(FinetuneDetailSerializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=FinetuneStartSerializer, responses={200: dict})
    @action(detail=False, methods=["post"])
    def estimate(self, request):
        """The training memory estimate and verdict for these options on the base model's host."""
        require(request.user, roles.FINETUNE)
        serializer, base, _version = self._inputs(request)
        require(request.user, roles.VIEW, base)
        options = services.check_options(serializer.options())
        verdict = services.finetune_estimate(
            base=base, options=options, gpu_count=serializer.validated_data["gpu_count"]
        )
        return Response({"estimate": verdict.as_dict(gettext) if verdict is not None else None})

    @extend_schema(request=None, responses=FinetuneDetailSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Stop: the program saves a checkpoint at its next step boundary, then the run is cancelled."""
        job = services.finetune_cancel(actor=request.user, job=self._job(pk))
        return Response(FinetuneDetailSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses=FinetuneDetailSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, pk=None):
        """Continue a cancelled or failed run from its newest checkpoint."""
        job = services.finetune_resume(actor=request.user, job=self._job(pk))
        return Response(FinetuneDetailSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class AdapterViewSet(viewsets.GenericViewSet):
    """An adapter's actions (read it, with its lineage, at /api/v1/models/{id}/)."""

    queryset = ModelArtifact.objects.none()
    serializer_class = ArtifactSerializer

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        if request.method != "OPTIONS":
            require(request.user, roles.VIEW)

    def _adapter(self, pk) -> ModelArtifact:
        found = (
            ModelArtifact.objects.select_related("repo", "host", "base").filter(pk=pk).first()
            if str(pk).isdigit()
            else None
        )
        if found is None:
            raise Http404
        require(self.request.user, roles.VIEW, found)
        return found

    @extend_schema(request=MergeSerializer, responses={202: dict})
    @action(detail=True, methods=["post"])
    def merge(self, request, pk=None):
        """Merge the adapter into its base model: a `merge` job that registers a full model with lineage."""
        serializer = MergeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        job = services.merge_start(
            actor=request.user, adapter=self._adapter(pk), precision=serializer.validated_data["precision"]
        )
        return Response({"job": job.pk}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=AdapterDeploySerializer, responses={201: DeploymentSerializer})
    @action(detail=True, methods=["post"])
    def deploy(self, request, pk=None):
        """Deploy on the base model (a new deployment, owned by `team` when given), or add to `deployment` (same base)
        as a new spec version."""
        adapter = self._adapter(pk)
        if not may_deploy_anywhere(request.user):
            require(request.user, roles.DEPLOY)
        serializer = AdapterDeploySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        target = serializer.validated_data.get("deployment")
        deployment = _object(Deployment.objects.all(), target, "deployment") if target is not None else None
        result = adapters.adapter_deploy(
            actor=request.user,
            adapter=adapter,
            deployment=deployment,
            name=serializer.validated_data.get("name", ""),
            # Deploying by a team's grant with several such teams: `team` (a name) says which owns it.
            team=adapters.team_named(serializer.validated_data.get("team")),
        )
        return Response(DeploymentSerializer(result).data, status=status.HTTP_201_CREATED)

"""Model registry API: copies of models on hosts (add, import, cancel, delete, garbage-collect, copy to another
host), sources and the endpoint allow-list. Reading needs `view`; models need `add_model`; sources, the allow-list
and copies between hosts need `manage_inventory`. Service errors become 400 field errors
through the project's exception handler."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from console import roles
from console.api.viewsets import ConsoleViewSetMixin
from console.errors import ApplicationError
from deployments.jobs.serializers import JobSerializer
from deployments.models import AllowedEndpoint, ModelArtifact, ModelSource
from deployments.registry import services as registry
from deployments.registry.copies import artifact_copy
from deployments.registry.copy_inputs import CopySerializer
from deployments.registry.forms import add_error
from deployments.registry.serializers import (
    ArtifactDetailSerializer,
    ArtifactSerializer,
    CancelSerializer,
    EndpointSerializer,
    GcSerializer,
    ModelAddSerializer,
    ModelImportSerializer,
    SourceSerializer,
)


class ModelArtifactViewSet(
    ConsoleViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Copies of models on hosts. `?host__name=`, `?status=`, `?search=<repo id>`."""

    queryset = ModelArtifact.objects.select_related("repo__source", "host")
    serializer_class = ArtifactSerializer
    action_permissions = {
        "create": roles.ADD_MODEL,
        "destroy": roles.ADD_MODEL,
        "cancel": roles.ADD_MODEL,
        "import_model": roles.ADD_MODEL,
        "gc": roles.VIEW,
        "gc_run": roles.ADD_MODEL,
        "copy": roles.MANAGE_INVENTORY,
    }
    filterset_fields = ["host__name", "status"]
    search_fields = ["repo__repo_id"]
    ordering_fields = ["created_at", "ready_at", "bytes_total"]

    def get_serializer_class(self):
        return ArtifactDetailSerializer if self.action == "retrieve" else ArtifactSerializer

    def _respond(self, artifact, code):
        return Response(ArtifactDetailSerializer(artifact, context=self.get_serializer_context()).data, status=code)

    @extend_schema(request=ModelAddSerializer, responses={200: ArtifactDetailSerializer, 202: ArtifactDetailSerializer})
    def create(self, request):
        """Add a model to a host: 202 with the copy being downloaded, or 200 with the copy the host already
        has at that commit."""
        data = self._valid(ModelAddSerializer, request)
        try:
            artifact = registry.model_add(
                actor=request.user,
                source=data["source"],
                repo_id=data["repo_id"],
                revision=data["revision"] or "main",
                host=data["host"],
                credential=data.get("credential"),
                include=data["include"],
            )
        except ApplicationError as error:
            raise add_error(error) from None
        ready = artifact.status == ModelArtifact.Status.READY
        return self._respond(artifact, status.HTTP_200_OK if ready else status.HTTP_202_ACCEPTED)

    @extend_schema(responses={202: JobSerializer})
    def destroy(self, request, pk=None):
        """Delete the host's copy (a job on that host): 202 with the job, 400 while something uses it."""
        job = registry.artifact_delete(actor=request.user, artifact=self.get_object())
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=CancelSerializer, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Stop the download; partial files stay for a resume unless delete_partial."""
        artifact = self.get_object()
        data = self._valid(CancelSerializer, request)
        job = registry.model_cancel(actor=request.user, artifact=artifact, delete_partial=data["delete_partial"])
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=ModelImportSerializer, responses={202: ArtifactDetailSerializer})
    @action(detail=False, methods=["post"], url_path="import", url_name="import")
    def import_model(self, request):
        """Register a directory already on a host; its agent validates and hashes it."""
        data = self._valid(ModelImportSerializer, request)
        artifact = registry.model_import(
            actor=request.user, host=data["host"], directory=data["directory"], repo_id=data["name"]
        )
        return self._respond(artifact, status.HTTP_202_ACCEPTED)

    @extend_schema(parameters=[OpenApiParameter("host", OpenApiTypes.STR)], responses={200: OpenApiTypes.OBJECT})
    @action(detail=False, methods=["get"])
    def gc(self, request):
        """The ready copies nothing uses (what garbage collection would delete), with their total size."""
        data = self._valid(GcSerializer, request, request.query_params)
        candidates = list(
            registry.gc_candidates(actor=request.user, host=data.get("host"))
            .select_related("repo__source", "host")
            .order_by("host__name", "pk")
        )
        return Response(
            {
                "count": len(candidates),
                "total_bytes": sum(a.bytes_total for a in candidates),
                "candidates": ArtifactSerializer(candidates, many=True).data,
            }
        )

    @extend_schema(request=GcSerializer, responses={202: OpenApiTypes.OBJECT})
    @gc.mapping.post
    def gc_run(self, request):
        """Delete every unused copy (of one host with `host`): 202 with the delete jobs."""
        data = self._valid(GcSerializer, request)
        jobs = registry.artifacts_gc(actor=request.user, host=data.get("host"))
        return Response({"jobs": JobSerializer(jobs, many=True).data}, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=CopySerializer, responses={202: ArtifactDetailSerializer})
    @action(detail=True, methods=["post"])
    def copy(self, request, pk=None):
        """Copy this ready model to another host through the console (admins): 202 with the new copy, whose two copy
        jobs (one on each host) move and verify the files; 400 when that host holds it already."""
        artifact = self.get_object()
        data = self._valid(CopySerializer, request)
        copy = artifact_copy(actor=request.user, artifact=artifact, host=data["host"])
        return self._respond(copy, status.HTTP_202_ACCEPTED)

    def _valid(self, serializer_class, request, data=None) -> dict:
        serializer = serializer_class(data=request.data if data is None else data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


class SourceViewSet(ConsoleViewSetMixin, mixins.ListModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """Where models come from: the Hub, Hub-compatible mirrors and ModelScope (or its mirror). Tokens are write-only."""

    queryset = ModelSource.objects.all()
    serializer_class = SourceSerializer
    action_permissions = {"create": roles.MANAGE_INVENTORY}
    search_fields = ["name", "endpoint"]
    filterset_fields = ["kind"]

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = registry.source_create(
            actor=self.request.user,
            name=data["name"],
            kind=data["kind"],
            endpoint=data.get("endpoint", ""),
            token=data.get("token") or None,
        )


class AllowedEndpointViewSet(
    ConsoleViewSetMixin,
    mixins.ListModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """The host names and networks model sources may reach."""

    queryset = AllowedEndpoint.objects.all()
    serializer_class = EndpointSerializer
    action_permissions = {"create": roles.MANAGE_INVENTORY, "destroy": roles.MANAGE_INVENTORY}
    search_fields = ["pattern", "note"]

    def perform_create(self, serializer):
        data = serializer.validated_data
        serializer.instance = registry.endpoint_allow(
            actor=self.request.user, pattern=data["pattern"], note=data.get("note", "")
        )

    def perform_destroy(self, instance):
        registry.endpoint_remove(actor=self.request.user, endpoint=instance)

"""Model registry API: copies of models on hosts (add, import, cancel, delete, garbage-collect), sources
and the endpoint allow-list, and jobs with their numbered log. Reading needs `view`; models need
`add_model`; sources and the allow-list need `manage_inventory`. Service errors become 400 field errors
through the project's exception handler."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from console import roles
from console.api.viewsets import ConsoleViewSetMixin
from console.errors import ApplicationError
from console.fields import MASK
from console.models import Credential
from deployments.model_forms import add_error, hosts_for_models
from deployments.model_views import artifact_files
from deployments.models import AllowedEndpoint, Host, Job, JobLogLine, ModelArtifact, ModelSource
from deployments.services import models as registry

LOG_LIMIT, LOG_LIMIT_MAX = 500, 5000


# -- serializers ---------------------------------------------------------------------------------------------------


@extend_schema_field(OpenApiTypes.STR)
class SourceRefField(serializers.Field):
    """A source by id or by name."""

    default_error_messages = {"missing": "No source with this id or name."}

    def to_internal_value(self, data):
        sources = ModelSource.objects.exclude(kind=ModelSource.Kind.LOCAL)
        found = None
        if isinstance(data, int) or (isinstance(data, str) and data.isdigit()):
            found = sources.filter(pk=int(data)).first()
        if found is None and isinstance(data, str):
            found = sources.filter(name=data).first()
        if found is None:
            self.fail("missing")
        return found

    def to_representation(self, value):
        return value.name


def status_field(choices) -> serializers.CharField:
    """A read-only status named by its values (no shared "status" enum component for the schema to collide on)."""
    return serializers.CharField(read_only=True, help_text="One of: " + ", ".join(choices.values) + ".")


class JobSerializer(serializers.ModelSerializer):
    status = status_field(Job.Status)
    kind = serializers.CharField(read_only=True, help_text="One of: " + ", ".join(Job.Kind.values) + ".")
    actor = serializers.SlugRelatedField(slug_field="username", read_only=True)
    target = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id",
            "kind",
            "status",
            "target",
            "target_type",
            "target_id",
            "queue",
            "actor",
            "attempts",
            "max_attempts",
            "cancel_requested",
            "cancel_delete_partial",
            "progress",
            "result",
            "failure_cause",
            "failure_detail",
            "next_step",
            "log_seq",
            "created_at",
            "dispatched_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_target(self, job) -> str:
        return f"{job.target_type}:{job.target_id}" if job.target_type else ""


class ArtifactSerializer(serializers.ModelSerializer):
    repo_id = serializers.CharField(source="repo.repo_id", read_only=True)
    commit = serializers.CharField(source="repo.commit", read_only=True)
    source = serializers.CharField(source="repo.source.name", read_only=True)
    host = serializers.CharField(source="host.name", read_only=True)
    status = status_field(ModelArtifact.Status)

    class Meta:
        model = ModelArtifact
        fields = [
            "id",
            "repo_id",
            "commit",
            "source",
            "host",
            "status",
            "path",
            "bytes_done",
            "bytes_total",
            "imported",
            "created_at",
            "ready_at",
        ]
        read_only_fields = fields


class ArtifactDetailSerializer(ArtifactSerializer):
    repo = serializers.SerializerMethodField()
    files = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()
    last_job = serializers.SerializerMethodField()
    used_by = serializers.SerializerMethodField()

    class Meta(ArtifactSerializer.Meta):
        fields = [*ArtifactSerializer.Meta.fields, "repo", "files", "manifest", "progress", "last_job", "used_by"]
        read_only_fields = fields

    def _last_job(self, artifact) -> Job | None:
        if not hasattr(artifact, "_last_job"):
            artifact._last_job = registry.artifact_jobs(artifact).first()
        return artifact._last_job

    def get_repo(self, artifact) -> dict:
        repo = artifact.repo
        return {
            "id": repo.pk,
            "repo_id": repo.repo_id,
            "source": repo.source.name,
            "requested_revision": repo.requested_revision,
            "commit": repo.commit,
            "gated": repo.gated,
            "license": repo.license,
            "total_size": repo.total_size,
        }

    def get_files(self, artifact) -> list[dict]:
        return artifact_files(artifact)

    def get_progress(self, artifact) -> dict | None:
        job = self._last_job(artifact)
        return (job.progress or {}) if job is not None and job.is_active else None

    def get_last_job(self, artifact) -> dict | None:
        job = self._last_job(artifact)
        if job is None:
            return None
        return {
            "id": job.pk,
            "kind": job.kind,
            "status": job.status,
            "failure_cause": job.failure_cause,
            "failure_detail": job.failure_detail,
            "next_step": job.next_step,
        }

    def get_used_by(self, artifact) -> list[str]:
        return list(artifact.uses.order_by("holder").values_list("holder", flat=True))


class ModelAddSerializer(serializers.Serializer):
    source = SourceRefField(help_text='A source id or name (e.g. "Hugging Face Hub").')
    repo_id = serializers.CharField(max_length=200)
    revision = serializers.CharField(max_length=100, default="main", allow_blank=True)
    host = serializers.SlugRelatedField(slug_field="name", queryset=hosts_for_models())
    credential = serializers.PrimaryKeyRelatedField(
        queryset=Credential.objects.filter(kind=Credential.Kind.HF_TOKEN),
        required=False,
        allow_null=True,
        help_text="A stored Hugging Face token (id).",
    )
    include = serializers.ListField(
        child=serializers.CharField(max_length=200),
        required=False,
        default=list,
        help_text="Glob patterns of the files to download; empty: all.",
    )


class ModelImportSerializer(serializers.Serializer):
    host = serializers.SlugRelatedField(slug_field="name", queryset=hosts_for_models())
    directory = serializers.CharField(max_length=500, help_text="Absolute path on that host.")
    name = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class CancelSerializer(serializers.Serializer):
    delete_partial = serializers.BooleanField(default=False, help_text="Delete the files downloaded so far.")


class GcSerializer(serializers.Serializer):
    host = serializers.SlugRelatedField(
        slug_field="name",
        queryset=Host.objects.all(),
        required=False,
        allow_null=True,
        help_text="Only this host's copies.",
    )


class MaskedSecretField(serializers.CharField):
    """Write the secret; read back a mask (or null when none is stored)."""

    def to_representation(self, value) -> str:
        return MASK


class SourceSerializer(serializers.ModelSerializer):
    kind = serializers.ChoiceField(
        choices=[ModelSource.Kind.MIRROR, ModelSource.Kind.HUB], default=ModelSource.Kind.MIRROR
    )
    endpoint = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    url = serializers.CharField(read_only=True)
    token = MaskedSecretField(
        required=False,
        allow_blank=True,
        allow_null=True,
        style={"input_type": "password"},
        help_text="Write-only: responses show a mask.",
    )

    class Meta:
        model = ModelSource
        fields = ["id", "name", "kind", "endpoint", "url", "token", "created_at"]
        read_only_fields = ["url", "created_at"]
        extra_kwargs = {"name": {"validators": []}}  # the service says a name is taken, as a field error


class EndpointSerializer(serializers.ModelSerializer):
    class Meta:
        model = AllowedEndpoint
        fields = ["id", "pattern", "note", "created_at"]
        read_only_fields = ["created_at"]
        extra_kwargs = {"pattern": {"validators": []}}


class LogPageSerializer(serializers.Serializer):
    job = serializers.IntegerField()
    after = serializers.IntegerField()
    next_after = serializers.IntegerField()
    has_more = serializers.BooleanField()
    items = serializers.ListField(child=serializers.DictField())


# -- viewsets ------------------------------------------------------------------------------------------------------


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
            registry.gc_candidates(host=data.get("host"))
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

    def _valid(self, serializer_class, request, data=None) -> dict:
        serializer = serializer_class(data=request.data if data is None else data)
        serializer.is_valid(raise_exception=True)
        return serializer.validated_data


class SourceViewSet(ConsoleViewSetMixin, mixins.ListModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """Where models come from: the Hub and Hub-compatible mirrors. Tokens are write-only."""

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


class JobViewSet(ConsoleViewSetMixin, viewsets.ReadOnlyModelViewSet):
    """Long work (downloads, imports, deletions) and its numbered output."""

    queryset = Job.objects.select_related("actor")
    serializer_class = JobSerializer
    action_permissions = {"log": roles.VIEW}
    filterset_fields = ["kind", "status", "target_type", "target_id"]
    ordering_fields = ["id", "created_at", "finished_at"]

    @extend_schema(
        parameters=[
            OpenApiParameter("after", OpenApiTypes.INT, description="Lines after this seq."),
            OpenApiParameter("limit", OpenApiTypes.INT, description=f"At most {LOG_LIMIT_MAX}."),
        ],
        responses=LogPageSerializer,
    )
    @action(detail=True, methods=["get"])
    def log(self, request, pk=None):
        """The job's lines with seq > after, in order, at most limit; page on with `after=next_after`."""
        job = self.get_object()
        after = _int_param(request, "after", 0, minimum=0)
        limit = min(_int_param(request, "limit", LOG_LIMIT, minimum=1), LOG_LIMIT_MAX)
        lines = list(JobLogLine.objects.filter(job=job, seq__gt=after).order_by("seq")[: limit + 1])
        page = lines[:limit]
        return Response(
            {
                "job": job.pk,
                "after": after,
                "next_after": page[-1].seq if page else after,
                "has_more": len(lines) > limit,
                "items": [line.as_item() for line in page],
            }
        )


def _int_param(request, name: str, default: int, *, minimum: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise serializers.ValidationError({name: ["A whole number."]}) from None
    if value < minimum:
        raise serializers.ValidationError({name: [f"At least {minimum}."]})
    return value

"""Serializers of the model registry: copies of models on hosts, sources and the endpoint allow-list."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from console.accounts.models import Credential
from console.fields import MASK
from deployments.jobs.serializers import status_field
from deployments.models import AllowedEndpoint, Host, Job, ModelArtifact, ModelSource
from deployments.registry import services as registry
from deployments.registry.forms import hosts_for_models
from deployments.registry.names import IMPORT_NAME_MAX, import_name
from deployments.registry.views import artifact_files
from deployments.serving.models import DEPLOYMENT_NAME


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


class ArtifactSerializer(serializers.ModelSerializer):
    repo_id = serializers.CharField(source="repo.repo_id", read_only=True)
    commit = serializers.CharField(source="repo.commit", read_only=True)
    source = serializers.CharField(source="repo.source.name", read_only=True)
    host = serializers.CharField(source="host.name", read_only=True)
    status = status_field(ModelArtifact.Status)
    kind = status_field(ModelArtifact.Kind)

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
            "kind",
            "base",
            "lineage",
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
    name = serializers.CharField(
        max_length=IMPORT_NAME_MAX,
        required=False,
        allow_blank=True,
        default="",
        validators=[DEPLOYMENT_NAME],
        help_text="Lowercase letters, digits and hyphens, as a deployment's name; empty: made from the directory's.",
    )

    def validate(self, attrs):
        attrs["name"] = import_name(attrs.get("name", ""), attrs.get("directory", ""))
        return attrs


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
        choices=[ModelSource.Kind.MIRROR, ModelSource.Kind.HUB, ModelSource.Kind.MODELSCOPE],
        default=ModelSource.Kind.MIRROR,
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

"""API shapes of datasets. Nothing here carries a row: schema, counts and problems by line and field only; the
preview (view_data) is the one response with rows."""

from __future__ import annotations

from django.contrib.auth.models import Group
from rest_framework import serializers

from console import roles
from console.accounts.models import Credential
from deployments.datasets.models import Dataset, DatasetUpload, DatasetVersion, Format
from deployments.datasets.services import CHUNK_MAX_BYTES
from deployments.datasets.stats import stats_view
from deployments.datasets.validation import describe
from deployments.registry.serializers import SourceRefField


class ProblemsField(serializers.ReadOnlyField):
    """Stored problems, each with its sentence in the reader's language."""

    def to_representation(self, value):
        return [{**problem, "message": describe(problem)} for problem in value or []]


class VersionSerializer(serializers.ModelSerializer):
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    validation_errors = ProblemsField()
    stats = serializers.SerializerMethodField(
        help_text="Statistics computed by a dataset_stats job: rows, columns, token lengths (percentiles, histogram "
        "bins and counts) with a model's tokenizer, the train/eval split; `status` (computed, not_computed), "
        "`running_job` (a job computing them now) and `failed_job` (the newest job, when it failed). Never a row."
    )

    class Meta:
        model = DatasetVersion
        fields = [
            "version",
            "sha256",
            "size",
            "format",
            "shape",
            "row_count",
            "columns",
            "validation_errors",
            "status",
            "stats",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields

    def get_stats(self, version) -> dict:
        return stats_view(version)


class DatasetSerializer(serializers.ModelSerializer):
    team = serializers.PrimaryKeyRelatedField(queryset=Group.objects.exclude(name__in=list(roles.ROLES)))
    team_name = serializers.CharField(source="team.name", read_only=True)
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = ["id", "name", "team", "team_name", "description", "created_by", "created_at", "latest_version"]
        read_only_fields = ["id", "created_by", "created_at"]
        extra_kwargs = {"name": {"validators": []}}  # uniqueness is the service's, with its sentence

    def get_latest_version(self, dataset) -> int | None:
        latest = dataset.versions.order_by("-version").values_list("version", flat=True).first()
        return latest


class UploadStartSerializer(serializers.Serializer):
    dataset = serializers.IntegerField()
    filename = serializers.CharField(max_length=255)
    size = serializers.IntegerField(min_value=0, max_value=2**62)
    format = serializers.ChoiceField(choices=Format.choices, required=False, allow_blank=True)
    sha256 = serializers.CharField(max_length=64, required=False, allow_blank=True)


class UploadCompleteSerializer(serializers.Serializer):
    sha256 = serializers.CharField(max_length=64, required=False, allow_blank=True)


class UploadSerializer(serializers.ModelSerializer):
    errors = ProblemsField()
    version = serializers.SlugRelatedField(slug_field="version", read_only=True)
    chunk_max_bytes = serializers.SerializerMethodField()

    class Meta:
        model = DatasetUpload
        fields = [
            "id",
            "dataset",
            "filename",
            "format",
            "size",
            "received",
            "sha256",
            "status",
            "errors",
            "version",
            "chunk_max_bytes",
            "created_at",
        ]
        read_only_fields = fields

    def get_chunk_max_bytes(self, upload) -> int:
        return CHUNK_MAX_BYTES


class StatsStartSerializer(serializers.Serializer):
    tokenizer = serializers.IntegerField(
        min_value=1,
        max_value=2**62,
        allow_null=True,
        required=False,
        help_text="The model whose tokenizer counts the tokens; null: no token lengths.",
    )


class PreviewSerializer(serializers.Serializer):
    version = serializers.IntegerField()
    rows = serializers.ListField(child=serializers.DictField())


class HubImportSerializer(serializers.Serializer):
    """Import one file of a Hub dataset repo as the next version (deployments.datasets.hub_import)."""

    source = SourceRefField(help_text='A source id or name (e.g. "Hugging Face Hub").')
    repo_id = serializers.CharField(max_length=200, help_text="The dataset repo, org/name.")
    revision = serializers.CharField(max_length=100, default="main", allow_blank=True)
    path = serializers.CharField(max_length=500, help_text="The file in the repo: .jsonl, .json, .csv or .parquet.")
    credential = serializers.PrimaryKeyRelatedField(
        queryset=Credential.objects.filter(kind=Credential.Kind.HF_TOKEN),
        required=False,
        allow_null=True,
        help_text="A stored Hugging Face token (id).",
    )


class HubImportCancelSerializer(serializers.Serializer):
    job = serializers.IntegerField(min_value=1, max_value=2**62, help_text="The import's job (id).")

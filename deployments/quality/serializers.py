"""Quantize and evaluate API shapes: a job (its options, what it read, what it produced), the start requests
(checked by the services with the programs' own rules), an evaluation figure."""

from __future__ import annotations

from rest_framework import serializers

from deployments.jobs.serializers import status_field
from deployments.models import EvalResult, Job
from deployments.quality import selectors
from deployments.quality.services import GROUP_SIZES, SCHEMES, TASK_KINDS

JOB_FIELDS = [
    "id", "kind", "status", "options", "progress", "result", "actor", "failure_cause", "failure_detail", "next_step",
    "attempts", "created_at", "started_at", "finished_at",
]  # fmt: skip


class QualityJobSerializer(serializers.ModelSerializer):
    status = status_field(Job.Status)
    options = serializers.SerializerMethodField()
    actor = serializers.CharField(source="actor.username", default=None, read_only=True)

    class Meta:
        model = Job
        fields = JOB_FIELDS
        read_only_fields = fields

    def get_options(self, job: Job) -> dict:
        return (job.params or {}).get("options") or {}


class QuantizeJobSerializer(QualityJobSerializer):
    source = serializers.SerializerMethodField()
    calibration_version = serializers.SerializerMethodField()
    artifact = serializers.SerializerMethodField()

    class Meta(QualityJobSerializer.Meta):
        fields = [*JOB_FIELDS, "source", "calibration_version", "artifact"]
        read_only_fields = fields

    def get_source(self, job: Job) -> int | None:
        return (job.params or {}).get("source_artifact_id")

    def get_calibration_version(self, job: Job) -> int | None:
        """The dataset version calibrated on; null: the shipped sample (or no calibration)."""
        return (job.params or {}).get("dataset_version_id")

    def get_artifact(self, job: Job) -> int | None:
        found = selectors.produced(job)
        return found.pk if found else None


class EvalResultSerializer(serializers.ModelSerializer):
    metric = status_field(EvalResult.Metric)

    class Meta:
        model = EvalResult
        fields = [
            "id", "job", "artifact", "metric", "value", "dataset_version", "data_sha256", "context_length", "stride",
            "task_kind", "tokens", "examples", "tokens_per_s", "detail", "created_at",
        ]  # fmt: skip
        read_only_fields = fields


class EvaluateJobSerializer(QualityJobSerializer):
    artifacts = serializers.SerializerMethodField()
    perplexity_version = serializers.SerializerMethodField()
    task_version = serializers.SerializerMethodField()
    results = serializers.SerializerMethodField()

    class Meta(QualityJobSerializer.Meta):
        fields = [*JOB_FIELDS, "artifacts", "perplexity_version", "task_version", "results"]
        read_only_fields = fields

    def get_artifacts(self, job: Job) -> list[int]:
        return list((job.params or {}).get("artifact_ids") or [])

    def get_perplexity_version(self, job: Job) -> int | None:
        """The held-out dataset version; null: the shipped text sample (or no perplexity)."""
        return (job.params or {}).get("perplexity_version_id")

    def get_task_version(self, job: Job) -> int | None:
        return (job.params or {}).get("task_version_id")

    def get_results(self, job: Job) -> list[dict]:
        return EvalResultSerializer(selectors.job_results(job), many=True).data


class QuantizeStartSerializer(serializers.Serializer):
    source = serializers.IntegerField(help_text="The model artifact to quantize (a ready full-precision model).")
    scheme = serializers.ChoiceField(choices=list(SCHEMES))
    group_size = serializers.ChoiceField(choices=list(GROUP_SIZES), required=False, allow_null=True)
    ignore = serializers.ListField(child=serializers.CharField(), required=False, help_text="Default: lm_head.")
    kv_cache_fp8 = serializers.BooleanField(default=False)
    calibration_version = serializers.IntegerField(
        required=False, allow_null=True, help_text="A dataset version to calibrate on; null: the shipped sample."
    )
    samples = serializers.IntegerField(default=64)
    seq_len = serializers.IntegerField(default=512)
    seed = serializers.IntegerField(default=0)

    def options(self) -> dict:
        data = dict(self.validated_data)
        for name in ("source", "calibration_version"):
            data.pop(name, None)
        return data


class EvalSplitFields(serializers.Serializer):
    """Perplexity and task data alike may be only a version's fine-tune eval split."""

    eval_split = serializers.BooleanField(
        default=False,
        help_text="Only the rows a fine-tune holds out of the version (its eval split); eval_fraction and seed "
        "default to the version's computed split (stats.split), else 0.1 and the fine-tune's default seed.",
    )
    eval_fraction = serializers.FloatField(
        required=False, help_text="The fine-tune's eval_fraction (0 < f < 0.5); implies eval_split."
    )
    seed = serializers.IntegerField(
        required=False, help_text="The fine-tune's hyperparameters.seed; implies eval_split."
    )


class PerplexityInputSerializer(EvalSplitFields):
    dataset_version = serializers.IntegerField(
        required=False, allow_null=True, help_text="Held-out text: a dataset version; null: the shipped sample."
    )
    context_length = serializers.IntegerField(default=512)
    stride = serializers.IntegerField(required=False)
    max_tokens = serializers.IntegerField(required=False)


class TaskInputSerializer(EvalSplitFields):
    dataset_version = serializers.IntegerField(help_text="The dataset version that defines the task.")
    kind = serializers.ChoiceField(choices=list(TASK_KINDS))
    prompt_field = serializers.CharField(default="prompt")
    expected_field = serializers.CharField(default="expected")
    choices_field = serializers.CharField(default="choices")
    limit = serializers.IntegerField(required=False, allow_null=True)
    max_new_tokens = serializers.IntegerField(required=False)


class EvaluateStartSerializer(serializers.Serializer):
    artifacts = serializers.ListField(child=serializers.IntegerField(), min_length=1, max_length=8)
    perplexity = PerplexityInputSerializer(required=False, allow_null=True)
    task = TaskInputSerializer(required=False, allow_null=True)

"""Fine-tune API shapes: a run (the job with its options, checkpoints and what it produced), the start request
(the program's spec fields, checked by services.check_options), the estimate."""

from __future__ import annotations

from rest_framework import serializers

from deployments.finetune import selectors
from deployments.finetune.services import METHODS, PRECISIONS
from deployments.jobs.serializers import status_field
from deployments.models import Checkpoint, Job


class CheckpointSerializer(serializers.ModelSerializer):
    tier = status_field(Checkpoint.Tier)

    class Meta:
        model = Checkpoint
        fields = ["step", "tier", "path", "size", "files", "metrics", "created_at", "moved_at"]
        read_only_fields = fields


class FinetuneSerializer(serializers.ModelSerializer):
    status = status_field(Job.Status)
    base = serializers.SerializerMethodField()
    dataset_version = serializers.SerializerMethodField()
    options = serializers.SerializerMethodField()
    artifact = serializers.SerializerMethodField()
    actor = serializers.CharField(source="actor.username", default=None, read_only=True)

    class Meta:
        model = Job
        fields = [
            "id", "status", "base", "dataset_version", "options", "progress", "result", "artifact", "actor",
            "failure_cause", "failure_detail", "next_step", "attempts", "created_at", "started_at", "finished_at",
        ]  # fmt: skip
        read_only_fields = fields

    def get_base(self, job: Job) -> int | None:
        return (job.params or {}).get("base_artifact_id")

    def get_dataset_version(self, job: Job) -> int | None:
        return (job.params or {}).get("dataset_version_id")

    def get_options(self, job: Job) -> dict:
        return (job.params or {}).get("options") or {}

    def get_artifact(self, job: Job) -> int | None:
        produced = selectors.produced(job)
        return produced.pk if produced else None


class FinetuneDetailSerializer(FinetuneSerializer):
    checkpoints = serializers.SerializerMethodField()

    class Meta(FinetuneSerializer.Meta):
        fields = [*FinetuneSerializer.Meta.fields, "checkpoints"]
        read_only_fields = fields

    def get_checkpoints(self, job: Job) -> list[dict]:
        return CheckpointSerializer(selectors.checkpoints(job), many=True).data


class FinetuneStartSerializer(serializers.Serializer):
    base = serializers.IntegerField(help_text="The base model artifact (a ready full model).")
    dataset_version = serializers.IntegerField(help_text="A ready dataset version you may train on.")
    method = serializers.ChoiceField(choices=METHODS, default="lora")
    precision = serializers.ChoiceField(choices=PRECISIONS, default="auto")
    gradient_checkpointing = serializers.BooleanField(default=False)
    eval_fraction = serializers.FloatField(default=0.0)
    eval_every = serializers.IntegerField(required=False, allow_null=True)
    checkpoint_every = serializers.IntegerField(default=100)
    hyperparameters = serializers.DictField(required=False, help_text="See workers/jobs/finetune_spec.py.")
    gpu_count = serializers.IntegerField(default=1, min_value=1, max_value=16)

    def options(self) -> dict:
        data = dict(self.validated_data)
        for name in ("base", "dataset_version", "gpu_count"):
            data.pop(name)
        data["hyperparameters"] = data.get("hyperparameters") or {}
        return data


class AdapterDeploySerializer(serializers.Serializer):
    deployment = serializers.IntegerField(required=False, allow_null=True, help_text="Add to this deployment.")
    name = serializers.CharField(required=False, allow_blank=True, max_length=63, help_text="A new deployment's name.")
    team = serializers.CharField(
        required=False, allow_blank=True, help_text="The team that owns a new deployment (when several may deploy)."
    )


class MergeSerializer(serializers.Serializer):
    precision = serializers.ChoiceField(choices=PRECISIONS, default="auto")

"""Serializers of the deployments API: specs (write: the fields a user sets), deployments, images."""

from __future__ import annotations

from django.db import models
from rest_framework import serializers

from console.accounts.selectors import team_list
from console.api.parsers import JSONTextField
from deployments.models import AllowedImage, Deployment, DeploymentSpec, ModelArtifact
from deployments.serving import replicas
from deployments.serving.actions import allowed_actions
from deployments.serving.specs import SPEC_FIELDS


class SpecSerializer(serializers.ModelSerializer):
    # extra_env, lora_adapters, gpu_indexes: text that is not JSON is refused with the console's one wording.
    serializer_field_mapping = {**serializers.ModelSerializer.serializer_field_mapping, models.JSONField: JSONTextField}
    artifact = serializers.PrimaryKeyRelatedField(queryset=ModelArtifact.objects.all())
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = DeploymentSpec
        fields = ["id", "version", *SPEC_FIELDS, "diff", "note", "created_by", "created_at"]
        read_only_fields = ["id", "version", "diff", "created_by", "created_at"]
        extra_kwargs = {"credential": {"required": False, "allow_null": True}}


class SpecInputSerializer(SpecSerializer):
    """Partial input for an edit: only the fields given change."""

    artifact = serializers.PrimaryKeyRelatedField(queryset=ModelArtifact.objects.all(), required=False)


class DeploymentSerializer(serializers.ModelSerializer):
    spec = SpecSerializer(read_only=True)
    spec_input = SpecSerializer(write_only=True, source="spec_data", help_text="The first spec version.")
    team = serializers.SlugRelatedField(slug_field="name", queryset=team_list(), required=False, allow_null=True)
    actions = serializers.SerializerMethodField(help_text="What the deployment's state allows now.")
    job_status = serializers.CharField(source="job.status", read_only=True, default=None)
    placement_note = serializers.CharField(
        source="placement_display", read_only=True, help_text="Where it runs, in the request's language."
    )
    host = serializers.SlugRelatedField(slug_field="name", read_only=True)
    launch = serializers.BooleanField(write_only=True, default=True)
    job = serializers.PrimaryKeyRelatedField(read_only=True)
    replicas = serializers.SerializerMethodField(
        help_text="Its servers (0 is the deployment's own fields): wanted, running, serving (any runs), text "
        '("2/3 replicas running") and each server\'s index, state, host, GPUs, restarts.'
    )
    flags = serializers.JSONField(
        read_only=True,
        help_text="What needs a person's attention while it runs: [{cause, subject, detail, next_step, at}] "
        '(cause "gpu-failed": a GPU it holds failed, subject "<host>/gpu<index>"; cause "model-files-corrupt": '
        'the health check found its model files damaged, subject "model:<id>").',
    )

    class Meta:
        model = Deployment
        fields = [
            "id",
            "name",
            "team",
            "restart_policy",
            "environment",
            "prompt_retention",
            "state",
            "state_changed_at",
            "deadline",
            "spec",
            "spec_input",
            "launch",
            "host",
            "gpu_indexes",
            "placement_note",
            "runtime",
            "endpoint",
            "job",
            "command",
            "server",
            "actions",
            "replicas",
            "job_status",
            "failure_cause",
            "failure_detail",
            "next_step",
            "restart_count",
            "next_restart_at",
            "flags",
            "created_at",
        ]
        read_only_fields = [
            "state",
            "state_changed_at",
            "deadline",
            "host",
            "gpu_indexes",
            "placement_note",
            "runtime",
            "endpoint",
            "job",
            "command",
            "server",
            "failure_cause",
            "failure_detail",
            "next_step",
            "restart_count",
            "next_restart_at",
            "created_at",
        ]

    def get_actions(self, deployment: Deployment) -> list[str]:
        return list(allowed_actions(deployment))

    def get_replicas(self, deployment: Deployment) -> dict:
        found = replicas.summary(deployment)
        return {**found.as_dict(), "text": found.text}


class DeploymentUpdateSerializer(serializers.Serializer):
    spec = SpecInputSerializer(help_text="Changed fields; a new spec version is made with the diff.")
    note = serializers.CharField(required=False, allow_blank=True, max_length=255)


class ConfigureSerializer(serializers.Serializer):
    environment = serializers.ChoiceField(choices=Deployment.Environment.choices, required=False)
    prompt_retention = serializers.ChoiceField(choices=Deployment.PromptRetention.choices, required=False)


class RollbackSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)


class PlanSerializer(serializers.Serializer):
    """A spec to check without saving: the planner's verdict and the command line."""

    spec = SpecSerializer()
    # The deployment-name rule: a 5,000-character name is a 400, never a preview under a cut name.
    name = serializers.CharField(
        required=False, default="preview", validators=Deployment._meta.get_field("name").validators
    )
    deployment = serializers.IntegerField(
        required=False, allow_null=True, help_text="When editing: the deployment whose own GPUs count as free."
    )


class AllowedImageSerializer(serializers.ModelSerializer):
    class Meta:
        model = AllowedImage
        fields = ["id", "reference", "digest", "backend", "note", "pinned", "created_at"]
        read_only_fields = ["pinned", "created_at"]

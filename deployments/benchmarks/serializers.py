"""Benchmark API shapes: a run (with its steps on the detail), a step with every figure, the start request."""

from __future__ import annotations

from rest_framework import serializers

from deployments.benchmarks.models import FLOAT_FIGURES, INT_FIGURES, SERVER_FIGURES, BenchmarkRun, BenchmarkStep
from deployments.jobs.serializers import status_field

STEP_FIELDS = [
    "index", "label", "concurrency", "rate", *FLOAT_FIGURES, *INT_FIGURES, "errors", "has_errors", *SERVER_FIGURES,
]  # fmt: skip
PK_MAX = 2**31 - 1


class BenchmarkStepSerializer(serializers.ModelSerializer):
    class Meta:
        model = BenchmarkStep
        fields = [*STEP_FIELDS, "extra", "recorded_at"]
        read_only_fields = fields


class BenchmarkRunSerializer(serializers.ModelSerializer):
    state = status_field(BenchmarkRun.State)
    deployment_name = serializers.CharField(source="deployment.name", read_only=True)
    spec_version = serializers.IntegerField(source="spec.version", default=None, read_only=True)
    created_by = serializers.CharField(source="created_by.username", default=None, read_only=True)
    # Stored in English, read in the caller's language (deployments/benchmarks/texts.py).
    note = serializers.CharField(source="note_display", read_only=True)
    failure_detail = serializers.CharField(source="failure_detail_display", read_only=True)

    class Meta:
        model = BenchmarkRun
        fields = [
            "id", "deployment", "deployment_name", "spec", "spec_version", "created_by", "workload", "state", "job",
            "failure_cause", "failure_detail", "note", "created_at", "started_at", "finished_at",
        ]  # fmt: skip
        read_only_fields = fields


class BenchmarkDetailSerializer(BenchmarkRunSerializer):
    steps = BenchmarkStepSerializer(many=True, read_only=True)
    suggestion = serializers.JSONField(source="suggestion_display", read_only=True)

    class Meta(BenchmarkRunSerializer.Meta):
        fields = [
            *BenchmarkRunSerializer.Meta.fields, "steps", "baseline", "suggestion", "after_version", "approval",
            "schedule",
        ]  # fmt: skip
        read_only_fields = fields


class BenchmarkStartSerializer(serializers.Serializer):
    deployment = serializers.IntegerField(min_value=1, max_value=PK_MAX)
    workload = serializers.JSONField(
        help_text="dialect, prompt_tokens, output_tokens, sweep (concurrency|rate), levels, max_concurrency, "
        "warmup_s or warmup_requests, duration_s or requests, sampling, seed"
    )
    note = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class SuggestionApplySerializer(serializers.Serializer):
    rule = serializers.CharField(max_length=60, help_text="The suggestion's rule, as GET suggestions/ lists it.")

"""Health check runs in the API."""

from __future__ import annotations

from rest_framework import serializers

from deployments.monitoring.models import HealthCheckRun


class FindingSerializer(serializers.Serializer):
    severity = serializers.ChoiceField(choices=["critical", "warning", "info"])
    check = serializers.CharField()
    subject = serializers.CharField()
    message = serializers.CharField()
    next_step = serializers.CharField(allow_blank=True)


class HealthCheckRunSerializer(serializers.ModelSerializer):
    requested_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    findings = FindingSerializer(many=True, read_only=True)
    report = serializers.JSONField(read_only=True)
    progress = serializers.JSONField(read_only=True)

    class Meta:
        model = HealthCheckRun
        fields = [
            "id",
            "state",
            "trigger",
            "requested_by",
            "job",
            "findings_count",
            "findings",
            "report",
            "progress",
            "created_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class HealthCheckStartSerializer(serializers.Serializer):
    """Starting a run takes nothing: it checks everything."""

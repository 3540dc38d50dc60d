"""Serializers of jobs and their numbered log."""

from __future__ import annotations

from rest_framework import serializers

from audit.templatetags.trace_tags import trace_id_of
from deployments.jobs.selectors import can_read_job_log, log_view
from deployments.models import Job


def status_field(choices) -> serializers.CharField:
    """A read-only status named by its values (no shared "status" enum component for the schema to collide on)."""
    return serializers.CharField(read_only=True, help_text="One of: " + ", ".join(choices.values) + ".")


class JobSerializer(serializers.ModelSerializer):
    status = status_field(Job.Status)
    kind = serializers.CharField(read_only=True, help_text="One of: " + ", ".join(Job.Kind.values) + ".")
    actor = serializers.SlugRelatedField(slug_field="username", read_only=True)
    target = serializers.SerializerMethodField()
    failure_detail = serializers.SerializerMethodField()
    trace_id = serializers.SerializerMethodField(help_text="The OpenTelemetry trace the job was started in.")

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
            "trace_id",
            "created_at",
            "dispatched_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields

    def get_trace_id(self, job) -> str:
        return trace_id_of(job.traceparent)

    def get_failure_detail(self, job) -> str:
        """What happened: the cause's sentence, then the log lines that show it, which follow the log's rule (for
        a reader who may not read the log, the sentence alone; request content masked without view_data)."""
        detail = job.failure_detail
        if "\n" not in detail:
            return detail
        user = getattr(self.context.get("request"), "user", None)
        if user is None or not can_read_job_log(user, job):
            return detail.split("\n", 1)[0]
        return log_view(job, user=user).text(detail)

    def get_target(self, job) -> str:
        return f"{job.target_type}:{job.target_id}" if job.target_type else ""


class LogPageSerializer(serializers.Serializer):
    job = serializers.IntegerField()
    after = serializers.IntegerField()
    next_after = serializers.IntegerField()
    has_more = serializers.BooleanField()
    items = serializers.ListField(child=serializers.DictField())

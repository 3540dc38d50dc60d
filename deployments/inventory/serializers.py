from __future__ import annotations

from django.db import models
from rest_framework import serializers

from console.api.parsers import JSONTextField
from deployments.models import Gpu, Host


class GpuSerializer(serializers.ModelSerializer):
    host = serializers.SlugRelatedField(slug_field="name", queryset=Host.objects.all())
    reserved_bytes = serializers.SerializerMethodField()

    class Meta:
        model = Gpu
        fields = [
            "id",
            "host",
            "index",
            "uuid",
            "name",
            "memory_total",
            "memory_free",
            "reserved_bytes",
            "power_limit_w",
            "compute_capability",
            "nvlink_group",
            "health",
            "health_cause",
            "health_detail",
            "health_changed_at",
            "telemetry",
            "telemetry_at",
            "serial",
            "discovered",
            "updated_at",
        ]
        read_only_fields = [
            "memory_free",
            "discovered",
            "updated_at",
            "health_cause",
            "health_detail",
            "health_changed_at",
            "telemetry",
            "telemetry_at",
        ]

    def get_reserved_bytes(self, gpu) -> int:
        return getattr(gpu, "reserved", None) or 0


class HostSerializer(serializers.ModelSerializer):
    serializer_field_mapping = {**serializers.ModelSerializer.serializer_field_mapping, models.JSONField: JSONTextField}
    gpus = GpuSerializer(many=True, read_only=True)

    class Meta:
        model = Host
        fields = [
            "id",
            "name",
            "address",
            "labels",
            "status",
            "runtime",
            "model_store",
            "agent_version",
            "driver_version",
            "cuda_version",
            "last_heartbeat",
            "discovery_note",
            "gpus",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "agent_version",
            "driver_version",
            "cuda_version",
            "last_heartbeat",
            "discovery_note",
            "created_at",
            "updated_at",
        ]

    def validate_status(self, value: str) -> str:
        if value not in (Host.Status.MANUAL, Host.Status.MAINTENANCE):
            raise serializers.ValidationError("Online and offline come from the agent; set manual or maintenance.")
        return value

    def validate_labels(self, value):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise serializers.ValidationError('Labels map names to text values, e.g. {"zone": "rack-2"}.')
        return value

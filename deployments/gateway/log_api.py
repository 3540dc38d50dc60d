"""GET /api/v1/inference-log/: the inference log, read-only, filtered and paginated like its page. Who may read it
and which records is console.permissions' (require_inference_log, restrict_inference_log); `prompt` and
`completion` are null and empty for all but view_data holders."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, viewsets
from rest_framework.exceptions import ValidationError

import audit
from audit.filters import filters_as_strings
from console.permissions import require_inference_log
from deployments.gateway.log_forms import InferenceLogFilterForm
from deployments.gateway.log_views import VIEWED
from deployments.gateway.models import InferenceRecord
from deployments.gateway.selectors import blank_text, inference_record_list, record_text_visible


class InferenceRecordSerializer(serializers.ModelSerializer):
    prompt = serializers.JSONField(
        read_only=True, allow_null=True, help_text="What the caller sent, where kept; null without view_data."
    )
    completion = serializers.CharField(read_only=True, help_text="The answer, where kept; empty without view_data.")

    class Meta:
        model = InferenceRecord
        fields = [
            "id",
            "request_id",
            "trace_id",
            "started_at",
            "key_id",
            "key_prefix",
            "owner",
            "team_id",
            "deployment_id",
            "deployment_name",
            "adapter",
            "route",
            "stream",
            "status",
            "error",
            "prompt_tokens",
            "completion_tokens",
            "ttft_ms",
            "duration_ms",
            "client_ip",
            "replica",
            "batch_id",
            "position",
            "prompt",
            "completion",
        ]
        read_only_fields = fields

    def to_representation(self, instance: InferenceRecord) -> dict:
        return super().to_representation(blank_text(instance, visible=self.context.get("text_visible", False)))


def _filter_parameters() -> list[OpenApiParameter]:
    params = []
    for name, field in InferenceLogFilterForm().fields.items():
        enum = [value for value, _label in getattr(field, "choices", []) if value] or None
        kind = OpenApiTypes.DATETIME if name in ("since", "until") else OpenApiTypes.STR
        params.append(OpenApiParameter(name, kind, enum=enum, description=str(field.help_text or field.label)))
    return params


@extend_schema_view(list=extend_schema(parameters=_filter_parameters()))
class InferenceLogViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Inference records, newest first. Filters: deployment (name), key_prefix, status (a code, or ok, error, 4xx,
    5xx), request_id, since/until (ISO date or date-time, inclusive)."""

    queryset = InferenceRecord.objects.all()
    serializer_class = InferenceRecordSerializer
    filter_backends = []  # the filter form, shared with the page

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        require_inference_log(request.user)

    def _filters(self) -> dict:
        form = InferenceLogFilterForm(self.request.query_params)
        if not form.is_valid():
            raise ValidationError(form.errors)
        return form.active_filters()

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return InferenceRecord.objects.none()
        return inference_record_list(user=self.request.user, filters=self._filters())

    def get_serializer_context(self) -> dict:
        context = super().get_serializer_context()
        if not getattr(self, "swagger_fake_view", False):
            context["text_visible"] = record_text_visible(self.request.user)
        return context

    def list(self, request, *args, **kwargs):
        response = super().list(request, *args, **kwargs)
        if record_text_visible(request.user) and (request.query_params.get("page") or "1") == "1":
            audit.record(action=VIEWED, actor=request.user, detail={"filters": filters_as_strings(self._filters())})
        return response

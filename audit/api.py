"""The audit log's read-only API: events (filtered, paginated, exportable), verification, checkpoints.

Everything needs view_data, a global action: a user without it gets 403 on every route, the detail
route included (never 404: the answer would not depend on the object).
"""

from __future__ import annotations

from django.db.models import Max
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
    inline_serializer,
)
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.export import FORMATS, events_export, is_asgi
from audit.filters import AuditFilterForm
from audit.models import AuditCheckpoint, AuditEvent
from audit.selectors import checkpoint_list, event_list, verification_status
from console import roles
from console.api.viewsets import ConsoleReadOnlyViewSet, ConsoleViewSetMixin
from console.permissions import require


class AuditEventSerializer(serializers.ModelSerializer):
    time = serializers.DateTimeField(source="created_at", read_only=True)
    actor = serializers.CharField(source="actor_name", read_only=True)
    roles = serializers.ListField(child=serializers.CharField(), read_only=True)
    diff = serializers.JSONField(
        source="changes",
        read_only=True,
        help_text="{field: [before, after]} for the fields that changed; secrets masked.",
    )
    detail = serializers.JSONField(source="details", read_only=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "time",
            "created_us",
            "actor",
            "actor_id",
            "roles",
            "action",
            "source",
            "outcome",
            "target_type",
            "target_id",
            "target_name",
            "diff",
            "detail",
            "client_ip",
            "request_id",
            "trace_id",
            "prev_hash",
            "hash",
        ]
        read_only_fields = fields


class AuditCheckpointSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditCheckpoint
        fields = ["id", "created_us", "last_event_id", "head_hash", "count", "signature"]
        read_only_fields = fields


def _filter_parameters() -> list[OpenApiParameter]:
    form = AuditFilterForm()
    params = []
    for name, field in form.fields.items():
        enum = [value for value, _label in getattr(field, "choices", []) if value] or None
        kind = OpenApiTypes.DATETIME if name in ("since", "until") else OpenApiTypes.STR
        params.append(OpenApiParameter(name, kind, enum=enum, description=field.help_text or field.label))
    return params


FILTER_PARAMETERS = _filter_parameters()
FORMAT_PARAMETER = OpenApiParameter(
    "format", OpenApiTypes.STR, enum=list(FORMATS), default="csv", description="csv or jsonl (JSON Lines)"
)
ID_PARAMETER = OpenApiParameter("id", OpenApiTypes.INT, OpenApiParameter.PATH)


def _valid_filters(query_params) -> dict:
    form = AuditFilterForm(query_params)
    if not form.is_valid():
        raise ValidationError(form.errors)
    return form.active_filters()


@extend_schema_view(list=extend_schema(parameters=FILTER_PARAMETERS), retrieve=extend_schema(parameters=[ID_PARAMETER]))
class AuditEventViewSet(ConsoleReadOnlyViewSet):
    """Audit events, newest first. Filters: actor, action (exact, or a prefix ending with "."), target_type,
    target_id, source, outcome, since/until (ISO date or date-time, inclusive), q (target name)."""

    queryset = AuditEvent.objects.all()
    serializer_class = AuditEventSerializer
    action_permissions = {"list": roles.VIEW_DATA, "retrieve": roles.VIEW_DATA, "export": roles.VIEW_DATA}
    filter_backends = []  # the filter form, shared with the page
    lookup_value_regex = r"\d+"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return AuditEvent.objects.none()
        # The base class would look detail routes up within "view"; the audit log is view_data only.
        filters = _valid_filters(self.request.query_params) if self.action == "list" else {}
        return event_list(user=self.request.user, filters=filters)

    def known_count(self) -> int | None:
        """The unfiltered list's total without COUNT(*) over the whole log: ids run from 1 without a gap (each
        event is the last + 1, and none is ever deleted), so the head's id is the count."""
        if self.action != "list" or _valid_filters(self.request.query_params):
            return None
        return AuditEvent.objects.aggregate(head=Max("id"))["head"] or 0

    def perform_content_negotiation(self, request, force=False):
        if self.action == "export":  # ?format= names the export's format here, not a renderer
            renderer = JSONRenderer()
            return renderer, renderer.media_type
        return super().perform_content_negotiation(request, force)

    @extend_schema(
        parameters=[FORMAT_PARAMETER, *FILTER_PARAMETERS],
        responses={
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/x-ndjson"): OpenApiTypes.STR,
            400: OpenApiResponse(description="Invalid filters or format."),
        },
    )
    @action(detail=False, methods=["get"])
    def export(self, request):
        """The filtered events as a streamed CSV or JSON Lines download (records `audit.exported`)."""
        fmt = request.query_params.get("format") or "csv"
        if fmt not in FORMATS:
            raise ValidationError({"format": [f"Choose one of: {', '.join(FORMATS)}."]})
        return events_export(
            user=request.user, filters=_valid_filters(request.query_params), fmt=fmt, asynchronous=is_asgi(request)
        )


class AuditCheckpointViewSet(ConsoleViewSetMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """Signed checkpoints of the chain's head, newest first."""

    queryset = AuditCheckpoint.objects.all()
    serializer_class = AuditCheckpointSerializer
    action_permissions = {"list": roles.VIEW_DATA}
    filter_backends = []

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return AuditCheckpoint.objects.none()
        return checkpoint_list(user=self.request.user)


CHECKPOINT_STATUS = inline_serializer(
    "AuditCheckpointStatus",
    {
        "id": serializers.IntegerField(),
        "created_us": serializers.IntegerField(),
        "time": serializers.DateTimeField(),
        "last_event_id": serializers.IntegerField(),
        "head_hash": serializers.CharField(),
        "count": serializers.IntegerField(),
        "signature": serializers.CharField(),
        "valid": serializers.BooleanField(help_text="The checkpoint's signature and head still match the chain."),
    },
    allow_null=True,
)
VERIFICATION = inline_serializer(
    "AuditVerification",
    {
        "ok": serializers.BooleanField(),
        "checked": serializers.IntegerField(help_text="Events checked (those after the checkpoint when there is one)."),
        "total": serializers.IntegerField(),
        "summary": serializers.CharField(),
        "broken_position": serializers.IntegerField(allow_null=True, help_text="0: the checkpoint itself."),
        "broken_id": serializers.IntegerField(allow_null=True),
        "reason": serializers.CharField(),
        "after_id": serializers.IntegerField(help_text="Checked the events after this id (the checkpoint's head)."),
        "checkpoint": CHECKPOINT_STATUS,
    },
)


class AuditVerificationView(APIView):
    """Is the chain intact? Checked from the last signed checkpoint (or from the start without one)."""

    @extend_schema(responses=VERIFICATION)
    def get(self, request):
        require(request.user, roles.VIEW_DATA)
        return Response(verification_status(user=request.user))

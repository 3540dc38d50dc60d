"""The usage API: GET /api/v1/usage/ (totals, a per-day series and grouped rows with latency percentiles) and
its CSV, GET /api/v1/usage.csv or /api/v1/usage/?format=csv (the filtered daily rows). The same filters and the
same rule as the page (console.permissions.restrict_usage)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from audit.export import is_asgi
from console import roles
from console.api.parsers import REFUSAL, has_unstorable_text
from console.permissions import require
from deployments.gateway.usage import BASE_MODEL, usage_report, usage_rows
from deployments.gateway.usage_export import usage_csv_response
from deployments.gateway.usage_forms import GROUP_LABELS, UsageFilterForm

PARAMETERS = [
    OpenApiParameter("since", OpenApiTypes.DATE, description="First day, inclusive (default: 30 days to until)."),
    OpenApiParameter("until", OpenApiTypes.DATE, description="Last day, inclusive (default: today)."),
    OpenApiParameter("deployment", OpenApiTypes.INT, description="A deployment's id."),
    OpenApiParameter("team", OpenApiTypes.INT, description="A team's id."),
    OpenApiParameter("key", OpenApiTypes.INT, description="An inference key's id."),
    OpenApiParameter("adapter", OpenApiTypes.STR, description=f"An adapter's name; {BASE_MODEL} for the base model."),
]
GROUP_BY = OpenApiParameter("group_by", OpenApiTypes.STR, enum=list(GROUP_LABELS), default="deployment")
FORMAT = OpenApiParameter("format", OpenApiTypes.STR, enum=["json", "csv"], default="json")


def _milliseconds() -> serializers.FloatField:
    return serializers.FloatField(allow_null=True, help_text="Milliseconds; null without calls.")


def _figures(name: str, extra: dict | None = None, **kwargs):
    return inline_serializer(
        name,
        {
            **(extra or {}),
            "requests": serializers.IntegerField(),
            "errors": serializers.IntegerField(help_text="Calls answered with a status of 400 or more."),
            "error_rate": serializers.FloatField(allow_null=True),
            "prompt_tokens": serializers.IntegerField(),
            "completion_tokens": serializers.IntegerField(),
            "total_tokens": serializers.IntegerField(),
            "p50_ms": _milliseconds(),
            "p90_ms": _milliseconds(),
            "p99_ms": _milliseconds(),
        },
        **kwargs,
    )


REPORT = inline_serializer(
    "UsageReport",
    {
        "since": serializers.DateField(),
        "until": serializers.DateField(),
        "group_by": serializers.ChoiceField(choices=list(GROUP_LABELS)),
        "totals": _figures("UsageFigures"),
        "series": _figures("UsageDayFigures", {"day": serializers.DateField()}, many=True),
        "rows": _figures(
            "UsageGroup",
            {
                "value": serializers.JSONField(help_text="The id, adapter name or day the row groups by."),
                "label": serializers.CharField(),
            },
            many=True,
        ),
    },
)
CSV_RESPONSES = {(200, "text/csv"): OpenApiTypes.STR, 400: OpenApiResponse(description="Invalid filters.")}


def _filters(request) -> dict:
    unstorable = [name for name, values in request.query_params.lists() if has_unstorable_text([name, *values])]
    if unstorable:
        raise ValidationError({name: [REFUSAL] for name in unstorable})
    form = UsageFilterForm(request.query_params, user=request.user)
    if not form.is_valid():
        raise ValidationError(form.errors)
    return form.active_filters()


class UsageApiView(APIView):
    """Usage through the gateway: what you may see of it (admins and auditors: all; others: their own keys and
    their teams' service accounts), as totals, a per-day series and rows grouped by `group_by`. `?format=csv`
    streams the filtered daily rows instead (as /api/v1/usage.csv)."""

    csv = False

    def perform_content_negotiation(self, request, force=False):
        if self.wants_csv(request):  # ?format=csv names the download here, not a renderer
            renderer = JSONRenderer()
            return renderer, renderer.media_type
        return super().perform_content_negotiation(request, force)

    def wants_csv(self, request) -> bool:
        return self.csv or request.query_params.get("format") == "csv"

    @extend_schema(
        parameters=[*PARAMETERS, GROUP_BY, FORMAT],
        responses={200: REPORT, (200, "text/csv"): OpenApiTypes.STR, 400: OpenApiResponse(description="Invalid.")},
    )
    def get(self, request):
        require(request.user, roles.VIEW)
        filters = _filters(request)
        rows = usage_rows(user=request.user, filters=filters)
        if self.wants_csv(request):
            return usage_csv_response(rows, asynchronous=is_asgi(request))
        report = usage_report(rows, group_by=filters["group_by"], since=filters["since"], until=filters["until"])
        return Response({"since": filters["since"], "until": filters["until"], **report})


class UsageCsvApiView(UsageApiView):
    """The filtered daily usage rows as a streamed CSV (the rule and filters of /api/v1/usage/)."""

    csv = True

    @extend_schema(operation_id="usage_csv", tags=["usage"], parameters=PARAMETERS, responses=CSV_RESPONSES)
    def get(self, request):
        return super().get(request)

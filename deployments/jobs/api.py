"""Jobs API: long work (downloads, imports, deletions, servers) and its numbered output. Listing needs `view`;
reading a job's output follows the rule on its target (deployments.jobs.selectors), a server's request content
shown only with `view_data`."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from console import roles
from console.api.viewsets import ConsoleViewSetMixin
from deployments.jobs.selectors import log_view, require_job_log
from deployments.jobs.serializers import JobSerializer, LogPageSerializer
from deployments.models import Job, JobLogLine

LOG_LIMIT, LOG_LIMIT_MAX = 500, 5000


class JobViewSet(ConsoleViewSetMixin, viewsets.ReadOnlyModelViewSet):
    """Long work (downloads, imports, deletions) and its numbered output."""

    queryset = Job.objects.select_related("actor")
    serializer_class = JobSerializer
    action_permissions = {"log": roles.VIEW}
    filterset_fields = ["kind", "status", "target_type", "target_id"]
    ordering_fields = ["id", "created_at", "finished_at"]

    @extend_schema(
        parameters=[
            OpenApiParameter("after", OpenApiTypes.INT, description="Lines after this seq."),
            OpenApiParameter("limit", OpenApiTypes.INT, description=f"At most {LOG_LIMIT_MAX}."),
        ],
        responses=LogPageSerializer,
    )
    @action(detail=True, methods=["get"])
    def log(self, request, pk=None):
        """The job's lines with seq > after, in order, at most limit; page on with `after=next_after`."""
        job = self.get_object()
        require_job_log(request.user, job)
        after = _int_param(request, "after", 0, minimum=0)
        limit = min(_int_param(request, "limit", LOG_LIMIT, minimum=1), LOG_LIMIT_MAX)
        lines = list(JobLogLine.objects.filter(job=job, seq__gt=after).order_by("seq")[: limit + 1])
        page = lines[:limit]
        view = log_view(job, user=request.user)
        view.start_after(after)
        return Response(
            {
                "job": job.pk,
                "after": after,
                "next_after": page[-1].seq if page else after,
                "has_more": len(lines) > limit,
                "items": view.items([line.as_item() for line in page]),
            }
        )


def _int_param(request, name: str, default: int, *, minimum: int) -> int:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise serializers.ValidationError({name: ["A whole number."]}) from None
    if value < minimum:
        raise serializers.ValidationError({name: [f"At least {minimum}."]})
    return value

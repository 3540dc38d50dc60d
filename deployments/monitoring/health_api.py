"""Health check API: the runs (list, read) and starting one (admins: manage_inventory). Starting while one is
queued or running returns that one (200) instead of a new one (201)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.response import Response

from console import roles
from console.permissions import require
from deployments.monitoring import health_services
from deployments.monitoring.health_serializers import HealthCheckRunSerializer, HealthCheckStartSerializer
from deployments.monitoring.models import HealthCheckRun


class HealthCheckViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = HealthCheckRunSerializer
    queryset = HealthCheckRun.objects.none()

    def initial(self, request, *args, **kwargs) -> None:
        super().initial(request, *args, **kwargs)
        if request.method != "OPTIONS":
            require(request.user, roles.VIEW)

    def get_queryset(self):
        return health_services.latest_runs()

    def get_serializer_class(self):
        return HealthCheckStartSerializer if self.action == "create" else HealthCheckRunSerializer

    @extend_schema(request=HealthCheckStartSerializer, responses={201: HealthCheckRunSerializer})
    def create(self, request):
        before = set(HealthCheckRun.objects.filter(state__in=health_services.ACTIVE).values_list("pk", flat=True))
        run = health_services.health_check_start(actor=request.user)
        created = run.pk not in before
        return Response(
            HealthCheckRunSerializer(run).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK
        )

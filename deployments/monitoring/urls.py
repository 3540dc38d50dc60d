"""The monitoring room's pages and endpoints, one module each: /metrics and discovery (Prometheus), the fleet
charts, the health check."""

from django.urls import include, path

urlpatterns = [
    path("", include("deployments.monitoring.metrics_urls")),
    path("fleet/", include("deployments.monitoring.charts_urls")),
    path("health/", include("deployments.monitoring.health_urls")),
]

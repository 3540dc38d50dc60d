"""Routes of deployments/monitoring (charts), under /fleet/: the fleet page and the charts' JSON."""

from django.urls import path

from deployments.monitoring import charts_views

urlpatterns = [
    path("", charts_views.FleetView.as_view(), name="fleet"),
    path("charts/", charts_views.FleetChartsView.as_view(), name="fleet-charts"),
    path("hosts/<int:pk>/charts/", charts_views.HostChartsView.as_view(), name="host-charts"),
    path("deployments/<int:pk>/charts/", charts_views.DeploymentChartsView.as_view(), name="deployment-charts"),
]

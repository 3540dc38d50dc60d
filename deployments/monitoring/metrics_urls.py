"""Routes of deployments/monitoring (metrics): at the site root, for Prometheus."""

from django.urls import path

from deployments.monitoring import metrics_views

urlpatterns = [
    path("metrics", metrics_views.console_metrics, name="metrics"),
    path("metrics/targets", metrics_views.targets, name="metrics-targets"),
    path("metrics/deployments/<int:pk>", metrics_views.deployment_metrics, name="metrics-deployment"),
    path(
        "metrics/deployments/<int:pk>/replicas/<int:index>",
        metrics_views.deployment_metrics,
        name="metrics-deployment-replica",
    ),
]

from django.urls import path

from deployments.gateway import log_views, usage_views

urlpatterns = [
    path("usage/", usage_views.UsageView.as_view(), name="usage"),
    path("usage/export.csv", usage_views.UsageExportView.as_view(), name="usage-export"),
    path("inference-log/", log_views.InferenceLogView.as_view(), name="inference-log"),
]

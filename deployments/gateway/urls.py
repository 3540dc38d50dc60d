from django.urls import path

from deployments.gateway import usage_views

urlpatterns = [
    path("usage/", usage_views.UsageView.as_view(), name="usage"),
    path("usage/export.csv", usage_views.UsageExportView.as_view(), name="usage-export"),
]

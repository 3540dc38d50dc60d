"""Routes of deployments/monitoring (health), under /health/."""

from django.urls import path

from deployments.monitoring import health_views as views

urlpatterns = [
    path("", views.HealthListView.as_view(), name="health-checks"),
    path("run/", views.HealthRunNowView.as_view(), name="health-check-run"),
    path("<int:pk>/", views.HealthDetailView.as_view(), name="health-check-detail"),
    path("<int:pk>/resume/", views.HealthResumeView.as_view(), name="health-check-resume"),
    path("<int:pk>/report.md", views.HealthReportMarkdownView.as_view(), name="health-check-markdown"),
    path("<int:pk>/report.pdf", views.HealthReportPdfView.as_view(), name="health-check-pdf"),
    path("models/<int:pk>/restore/", views.ArtifactRestoreView.as_view(), name="health-artifact-restore"),
]

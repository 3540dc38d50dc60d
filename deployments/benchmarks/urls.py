from django.urls import path

from deployments.benchmarks import views

app_name = "benchmarks"

urlpatterns = [
    path("", views.BenchmarkListView.as_view(), name="list"),
    path("new/", views.BenchmarkStartView.as_view(), name="start"),
    path("compare/", views.BenchmarkCompareView.as_view(), name="compare"),
    path("<int:pk>/", views.BenchmarkDetailView.as_view(), name="detail"),
    path("<int:pk>/cancel/", views.BenchmarkCancelView.as_view(), name="cancel"),
    path("<int:pk>/apply/", views.BenchmarkApplyView.as_view(), name="apply"),
]

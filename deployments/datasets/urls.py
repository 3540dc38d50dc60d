from django.urls import path

from deployments.datasets import views

urlpatterns = [
    path("", views.DatasetListView.as_view(), name="datasets"),
    path("<int:pk>/", views.DatasetDetailView.as_view(), name="dataset-detail"),
    path("<int:pk>/delete/", views.DatasetDeleteView.as_view(), name="dataset-delete"),
    path("<int:pk>/versions/<int:version>/preview/", views.DatasetPreviewView.as_view(), name="dataset-preview"),
    path("<int:pk>/versions/<int:version>/stats/", views.DatasetStatsView.as_view(), name="dataset-stats"),
    path("<int:pk>/import/", views.DatasetHubImportView.as_view(), name="dataset-hub-import"),
]

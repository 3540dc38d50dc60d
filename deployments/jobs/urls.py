from django.urls import path

from deployments.jobs import views

urlpatterns = [
    path("", views.JobListView.as_view(), name="jobs"),
    path("<int:pk>/", views.JobDetailView.as_view(), name="job-detail"),
]

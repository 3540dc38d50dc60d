"""Routes agents call with a job's token (no session, no CSRF): mounted under /internal/ by console/urls.py."""

from django.urls import path

from deployments.datasets import fetch

urlpatterns = [
    path("datasets/versions/<int:pk>/file", fetch.version_file, name="dataset-version-file"),
]

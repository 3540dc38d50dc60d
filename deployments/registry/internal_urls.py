"""Routes agents call with a copy job's token (no session, no CSRF): mounted under /internal/ by console/urls.py."""

from django.urls import path

from deployments.registry import copy_relay

urlpatterns = [
    path("models/copies/<int:pk>/files/<path:relpath>", copy_relay.copy_file, name="model-copy-file"),
    path("models/copies/<int:pk>/done", copy_relay.copy_done, name="model-copy-done"),
]

"""Background work carries the request and the user who started it (a real worker, real Redis)."""

from __future__ import annotations

import time

import pytest

from audit.models import AuditEvent

pytestmark = pytest.mark.django_db(transaction=True)


def test_worker_event_names_the_request_and_the_initiator(api, admin, celery_db_queue, credential):
    response = api(admin).call("post", "/api/v1/credentials/rotate-key/", 202, HTTP_X_REQUEST_ID="rotate-req-12345")
    assert response["X-Request-ID"] == "rotate-req-12345"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not AuditEvent.objects.filter(action="secret.rotated").exists():
        time.sleep(0.2)
    requested = AuditEvent.objects.get(action="secret.rotation_requested")
    rotated = AuditEvent.objects.get(action="secret.rotated")
    assert requested.source == "api" and requested.actor_name == admin.username
    assert rotated.source == "worker" and rotated.actor_name.startswith("worker:")
    assert rotated.request_id == "rotate-req-12345"
    assert rotated.details["initiated_by"] == admin.username
    assert rotated.details["re_encrypted"]["console.Credential"] == 1
    assert rotated.id > requested.id

"""API tokens cannot live forever and can be limited to reading. Each test is the attack, which used to work."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from console.accounts.models import ApiToken
from console.accounts.services.tokens import token_create

pytestmark = pytest.mark.django_db


def test_a_token_that_never_expires_is_refused(api, engineer, settings):
    refused = (
        api(engineer)
        .post("/api/v1/tokens/", {"name": "forever", "expires_at": "9999-12-31T00:00:00Z"}, expected=400)
        .data
    )
    assert "expires_at" in refused and "365" in str(refused["expires_at"])
    longest = timezone.now() + timedelta(days=settings.API_TOKEN_MAX_DAYS - 1)
    created = api(engineer).post("/api/v1/tokens/", {"name": "a year", "expires_at": longest.isoformat()}).data
    assert created["scope"] == "write" and created["token"].startswith("lld_")


def test_a_read_only_token_reads_and_changes_nothing(client, engineer):
    token, raw = token_create(actor=engineer, user=engineer, name="dashboards", scope=ApiToken.Scope.READ)
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    assert client.get("/api/v1/me", **auth).status_code == 200
    assert client.get("/api/v1/hosts/", **auth).status_code == 200
    before = ApiToken.objects.count()
    refused = client.post("/api/v1/tokens/", {"name": "escalate"}, content_type="application/json", **auth)
    assert refused.status_code == 403 and ApiToken.objects.count() == before
    assert client.delete(f"/api/v1/tokens/{token.pk}/", **auth).status_code == 403
    denial = AuditEvent.objects.filter(action="permission.denied", actor_id=engineer.pk).latest("id")
    assert "read-only" in denial.details["denied_action"]

"""API tokens: hashed at rest, shown once, expiring and revocable; token auth before session auth."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from console.accounts.models import ApiToken, hash_token
from console.accounts.services import token_cache
from console.accounts.services.access import role_grant, role_revoke, user_set_active
from console.accounts.services.tokens import token_authenticate, token_create, token_revoke
from console.permissions import has_global
from console.roles import VIEW

pytestmark = pytest.mark.django_db


def bearer(raw: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def test_anonymous_api_gets_401_with_a_bearer_challenge(client):
    response = client.get("/api/v1/me")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["code"] == "not_authenticated"


def test_token_is_stored_hashed_and_shown_once(api, engineer):
    response = api(engineer).post("/api/v1/tokens/", {"name": "ci"})
    raw = response.data["token"]
    assert raw.startswith("lld_") and len(raw) > 40
    stored = ApiToken.objects.get(pk=response.data["id"])
    assert stored.digest == hash_token(raw) and raw not in stored.digest
    listed = api(engineer).get("/api/v1/tokens/").content.decode()
    assert raw not in listed and "token" not in api(engineer).get(f"/api/v1/tokens/{stored.pk}/").data
    assert bearer(raw).get("/api/v1/me").data["username"] == engineer.username


def test_expired_and_revoked_tokens_are_refused(engineer, monkeypatch):
    soon = timezone.now() + timedelta(hours=1)
    _token, raw = token_create(actor=engineer, user=engineer, name="short", expires_at=soon)
    assert bearer(raw).get("/api/v1/me").status_code == 200  # now in the per-process cache
    later = soon + timedelta(seconds=1)
    monkeypatch.setattr(timezone, "now", lambda: later)
    assert bearer(raw).get("/api/v1/me").status_code == 401
    monkeypatch.undo()
    _token2, raw2 = token_create(actor=engineer, user=engineer, name="other")
    token_revoke(actor=engineer, token=_token2)
    response = bearer(raw2).get("/api/v1/me")
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def test_wrong_token_is_401_and_past_expiry_is_a_field_error(api, engineer):
    assert bearer("lld_not-a-real-token").get("/api/v1/me").status_code == 401
    response = api(engineer).post("/api/v1/tokens/", {"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, expected=400)
    assert "expires_at" in response.data


def test_token_acts_with_its_owners_role(engineer):
    _token, raw = token_create(actor=engineer, user=engineer, name="t")
    assert bearer(raw).get("/api/v1/users/").status_code == 403


def test_user_manager_sees_everyones_tokens_others_only_their_own(api, admin, engineer):
    token_create(actor=engineer, user=engineer, name="eng")
    token_create(actor=admin, user=admin, name="adm")
    assert {t["name"] for t in api(admin).get("/api/v1/tokens/").data["results"]} == {"eng", "adm"}
    assert {t["name"] for t in api(engineer).get("/api/v1/tokens/").data["results"]} == {"eng"}


def test_tokens_page_shows_the_new_token_once(client, auditor):
    client.force_login(auditor)
    page = client.post("/tokens/", {"name": "notebook"}, follow=True).content.decode()
    raw = page.split('id="new-token-value">')[1].split("<")[0]
    assert raw.startswith("lld_")
    assert raw not in client.get("/tokens/").content.decode()


# -- the per-process token cache (console/accounts/services/token_cache.py) --------------------------------------
def test_a_used_token_is_refused_at_once_after_revocation(engineer):
    token, raw = token_create(actor=engineer, user=engineer, name="cached")
    assert bearer(raw).get("/api/v1/me").status_code == 200
    assert bearer(raw).get("/api/v1/me").status_code == 200  # served from the cache
    token_revoke(actor=engineer, token=token)
    response = bearer(raw).get("/api/v1/me")
    assert response.status_code == 401 and "revoked" in response.json()["detail"]


def test_a_used_token_follows_its_owners_role_changes_and_deactivation_at_once(admin, engineer):
    _token, raw = token_create(actor=engineer, user=engineer, name="cached")
    assert bearer(raw).get("/api/v1/users/").status_code == 403
    role_grant(actor=admin, user=engineer, role="admin")
    assert bearer(raw).get("/api/v1/users/").status_code == 200
    role_revoke(actor=admin, user=engineer, role="admin")
    assert bearer(raw).get("/api/v1/users/").status_code == 403
    user_set_active(actor=admin, user=engineer, active=False)
    assert bearer(raw).get("/api/v1/me").status_code == 401


def test_a_revocation_made_elsewhere_is_seen_within_the_cache_lifetime(engineer, monkeypatch):
    """Another process's revocation sends this process no signal (a row update stands for it here): the cached
    token answers for at most TTL_SECONDS, then the row is read again."""
    token, raw = token_create(actor=engineer, user=engineer, name="elsewhere")
    now = [1000.0]
    monkeypatch.setattr(token_cache, "_clock", lambda: now[0])
    assert bearer(raw).get("/api/v1/me").status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    now[0] += token_cache.TTL_SECONDS + 0.1
    assert bearer(raw).get("/api/v1/me").status_code == 401


def test_a_cached_token_costs_no_query_and_requests_do_not_share_a_user(auditor, django_assert_num_queries):
    _token, raw = token_create(actor=auditor, user=auditor, name="fast")
    first = token_authenticate(raw)
    assert first is not None and has_global(first.user, VIEW)
    with django_assert_num_queries(0):
        second = token_authenticate(raw)
        assert second is not None and has_global(second.user, VIEW)
    second.user.first_name = "changed by one request"
    assert token_authenticate(raw).user.first_name != "changed by one request"
    assert token_authenticate("lld_unknown") is None

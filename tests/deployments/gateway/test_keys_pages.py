"""The inference keys, service accounts and team quotas pages and API: who opens them, the key shown once with
the calls to make, field errors on the form, revoke and disable, and the same through /api/v1/."""

from __future__ import annotations

import re

import pytest
from django.test import override_settings

from audit.models import AuditEvent
from console import roles
from console.accounts.services.access import object_grant
from deployments.gateway import keys
from deployments.gateway.models import InferenceKey, ServiceAccount, TeamQuota
from tests.factories import DeploymentFactory, TeamFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def chat(admin, engineer):
    """A deployment the engineer was granted use of, and team `apps` (the engineer's) owning another."""
    deployment = DeploymentFactory(name="chat")
    object_grant(actor=admin, grantee=engineer, action=roles.USE_DEPLOYMENT, target=deployment)
    team = TeamFactory(name="apps")
    team.user_set.add(engineer)
    DeploymentFactory(name="apps-model", team=team)
    return deployment


def _menu(client) -> list[str]:
    return re.findall(r'data-nav="([a-z]+)"', client.get("/").content.decode())


def test_the_pages_open_for_admin_and_for_an_engineer_with_a_grant(client, admin, engineer, auditor, chat):
    client.force_login(admin)
    keys.key_create(actor=admin, name="admin-app", all_deployments=True)
    for url in ("/gateway/keys/", "/gateway/keys/new/", "/gateway/service-accounts/", "/gateway/team-quotas/"):
        assert client.get(url).status_code == 200, url
    assert "keys" in _menu(client)
    assert "admin-app" in client.get("/gateway/keys/").content.decode()

    client.force_login(engineer)
    page = client.get("/gateway/keys/").content.decode()
    assert "keys" in _menu(client) and 'id="new-key"' in page and "admin-app" not in page  # only their own
    assert 'id="keys-table-empty"' in page
    form = client.get("/gateway/keys/new/").content.decode()
    assert ">chat</option>" in form and "apps-model" not in form  # only deployments they may use
    assert client.get("/gateway/service-accounts/").status_code == 403  # no deploy in their team
    assert client.get("/gateway/team-quotas/").status_code == 403

    client.force_login(auditor)
    assert "keys" not in _menu(client) and client.get("/gateway/keys/").status_code == 403


@override_settings(GATEWAY_PUBLIC_URL="https://llm.example.test")
def test_a_new_key_is_shown_once_with_the_calls_to_make(client, engineer, chat):
    client.force_login(engineer)
    body = {"name": "crm", "days": "30", "deployments": [chat.pk], "allowed_sources": "10.0.0.0/8\n192.0.2.7"}
    response = client.post("/gateway/keys/new/", body)
    key = InferenceKey.objects.get(name="crm")
    assert response.status_code == 302 and response["Location"] == f"/gateway/keys/{key.pk}/"
    page = client.get(response["Location"])
    html = page.content.decode()
    raw = re.search(r'id="new-key-value">(llk_[^<]+)<', html).group(1)
    assert keys.authenticate(raw) == key and "no-store" in page["Cache-Control"]
    assert "curl https://llm.example.test/v1/chat/completions" in html
    assert f"Authorization: Bearer {raw}" in html
    assert f'OpenAI(base_url="https://llm.example.test/v1", api_key="{raw}")' in html
    assert '"model": "chat"' in html
    assert key.allowed_sources == ["10.0.0.0/8", "192.0.2.7/32"]
    again = client.get(response["Location"]).content.decode()
    assert raw not in again and 'id="new-key"' not in again and "&lt;your key&gt;" in again


def test_the_gateway_address_defaults_to_this_host_on_the_gateway_port(client, engineer, chat):
    client.force_login(engineer)
    key, _ = keys.key_create(actor=engineer, name="crm", deployments=[chat])
    with override_settings(GATEWAY_PUBLIC_URL="", GATEWAY_PORT=8123):
        html = client.get(f"/gateway/keys/{key.pk}/", HTTP_HOST="[::1]:8000").content.decode()
    assert "curl http://[::1]:8123/v1/chat/completions" in html


def test_the_form_shows_field_errors(client, engineer, chat):
    client.force_login(engineer)
    with override_settings(INFERENCE_KEY_MAX_DAYS=30):
        response = client.post("/gateway/keys/new/", {"name": "crm", "days": "31", "deployments": [chat.pk]})
    assert response.status_code == 400
    assert re.search(r'data-field-error="days">[^<]*30', response.content.decode())
    response = client.post(
        "/gateway/keys/new/", {"name": "crm", "deployments": [chat.pk], "allowed_sources": "not-an-address"}
    )
    assert response.status_code == 400 and 'data-field-error="allowed_sources"' in response.content.decode()
    response = client.post("/gateway/keys/new/", {"name": "crm"})
    assert 'data-field-error="deployments"' in response.content.decode()
    assert not InferenceKey.objects.exists()


def test_revoke_from_the_key_page_after_confirming(client, admin, engineer, chat):
    key, raw = keys.key_create(actor=engineer, name="crm", deployments=[chat])
    client.force_login(engineer)
    page = client.get(f"/gateway/keys/{key.pk}/").content.decode()
    assert re.search(r'id="revoke-form" data-confirm="[^"]+"', page) and "confirm.js" in page
    response = client.post(f"/gateway/keys/{key.pk}/revoke/")
    assert response.status_code == 302 and keys.authenticate(raw) is None
    page = client.get(f"/gateway/keys/{key.pk}/").content.decode()
    assert 'data-key-state="revoked"' in page and 'id="revoke-form"' not in page and 'id="key-inactive"' in page
    mine, _ = keys.key_create(actor=admin, name="admins", all_deployments=True)
    assert client.get(f"/gateway/keys/{mine.pk}/").status_code == 404  # another person's key
    assert client.post(f"/gateway/keys/{mine.pk}/revoke/").status_code == 404
    assert InferenceKey.objects.get(pk=mine.pk).revoked_at is None


def test_editing_a_keys_scope_and_limits(client, engineer, chat):
    key, _ = keys.key_create(actor=engineer, name="crm", deployments=[chat])
    client.force_login(engineer)
    body = {"name": "crm2", "all_deployments": "on", "team": key.user.groups.get(name="apps").pk, "rpm": "30"}
    assert client.post(f"/gateway/keys/{key.pk}/", body).status_code == 302
    key.refresh_from_db()
    assert key.name == "crm2" and key.all_deployments and key.limits == {"rpm": 30} and key.team.name == "apps"
    response = client.post(f"/gateway/keys/{key.pk}/", {**body, "rpm": "0"})
    assert response.status_code == 400 and 'data-field-error="rpm"' in response.content.decode()


def test_service_accounts_and_team_quotas_pages(client, admin, chat):
    team = TeamFactory(name="billing-team")
    client.force_login(admin)
    assert 'id="service-accounts-empty"' in client.get("/gateway/service-accounts/").content.decode()
    response = client.post("/gateway/service-accounts/", {"name": "Bad Name", "team": team.pk})
    assert response.status_code == 400 and 'data-field-error="name"' in response.content.decode()
    response = client.post("/gateway/service-accounts/", {"name": "invoicer", "team": team.pk, "description": "x"})
    account = ServiceAccount.objects.get(name="invoicer")
    assert response["Location"] == f"/gateway/service-accounts/{account.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert 'id="account-keys-empty"' in page and 'id="disable-form" data-confirm=' in page

    object_grant(actor=admin, grantee=team, action=roles.USE_DEPLOYMENT, target=chat)
    form = client.get(f"/gateway/service-accounts/{account.pk}/keys/new/").content.decode()
    assert 'name="team"' not in form and ">chat</option>" in form
    response = client.post(
        f"/gateway/service-accounts/{account.pk}/keys/new/", {"name": "bot", "deployments": [chat.pk]}
    )
    key = InferenceKey.objects.get(name="bot")
    assert key.service_account == account and key.team == team
    assert re.search(r'id="new-key-value">llk_', client.get(response["Location"]).content.decode())

    client.post(f"/gateway/service-accounts/{account.pk}/disable/")
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert 'id="account-disabled"' in client.get(f"/gateway/service-accounts/{account.pk}/").content.decode()

    response = client.post("/gateway/team-quotas/", {"team": team.pk, "rpm": "100", "tpd": "50000"})
    assert response.status_code == 302 and TeamQuota.objects.get(team=team).limits == {"rpm": 100, "tpd": 50000}
    page = client.get(f"/gateway/team-quotas/?team={team.pk}").content.decode()
    assert 'name="rpm" value="100"' in page and "50000" in page
    response = client.post("/gateway/team-quotas/", {"team": team.pk, "tpm": "-1"})
    assert response.status_code == 400 and 'data-field-error="tpm"' in response.content.decode()


def test_the_api_creates_shows_once_changes_and_revokes(api, engineer, chat):
    created = (
        api(engineer)
        .post(
            "/api/v1/inference-keys/",
            {"name": "crm", "deployments": ["chat"], "allowed_sources": ["10.0.0.0/8"], "rpm": 10, "days": 7},
        )
        .data
    )
    raw = created["key"]
    key = InferenceKey.objects.get(pk=created["id"])
    assert keys.authenticate(raw) == key and created["prefix"] == raw[:12] and created["owner"] == engineer.username
    assert created["deployments"] == ["chat"] and created["rpm"] == 10 and created["tpm"] is None
    shown = api(engineer).get(f"/api/v1/inference-keys/{key.pk}/").data
    assert "key" not in shown and raw not in str(api(engineer).get("/api/v1/inference-keys/").data)
    changed = api(engineer).patch(f"/api/v1/inference-keys/{key.pk}/", {"tpm": 500, "allowed_sources": []}).data
    assert changed["rpm"] == 10 and changed["tpm"] == 500 and changed["allowed_sources"] == []
    revoked = api(engineer).post(f"/api/v1/inference-keys/{key.pk}/revoke/", expected=200).data
    assert revoked["revoked_at"] and not revoked["is_active"] and keys.authenticate(raw) is None
    assert AuditEvent.objects.filter(action="inference_key.revoked", target_id=str(key.pk)).exists()


def test_the_api_answers_bad_input_with_field_errors(api, engineer, chat):
    with override_settings(INFERENCE_KEY_MAX_DAYS=30):
        response = api(engineer).post(
            "/api/v1/inference-keys/", {"name": "x", "deployments": ["chat"], "days": 31}, 400
        )
    assert "days" in response.data
    response = api(engineer).post(
        "/api/v1/inference-keys/", {"name": "x", "deployments": ["chat"], "allowed_sources": ["10.1.2.3/8"]}, 400
    )
    assert "allowed_sources" in response.data
    # A deployment that does not exist reads as one the owner may not use (no enumeration).
    missing = api(engineer).post("/api/v1/inference-keys/", {"name": "x", "deployments": ["nope"]}, 400).data
    hidden = api(engineer).post("/api/v1/inference-keys/", {"name": "x", "deployments": ["apps-model"]}, 400).data
    assert missing["deployments"][0].replace("nope", "apps-model") == hidden["deployments"][0]
    response = api(engineer).post("/api/v1/inference-keys/", {"name": "x", "all_deployments": True, "rpm": 0}, 400)
    assert "rpm" in response.data
    key, _ = keys.key_create(actor=engineer, name="crm", deployments=[chat])
    assert "days" in api(engineer).patch(f"/api/v1/inference-keys/{key.pk}/", {"days": 3}, 400).data
    assert not InferenceKey.objects.exclude(pk=key.pk).exists()


def test_the_api_for_service_accounts_and_team_quotas(api, admin, engineer, auditor, chat):
    team = TeamFactory(name="billing-team")
    account = api(admin).post("/api/v1/service-accounts/", {"name": "invoicer", "team": "billing-team"}).data
    assert account["team"] == "billing-team" and account["is_active"]
    assert (
        "name" in api(admin).post("/api/v1/service-accounts/", {"name": "invoicer", "team": "billing-team"}, 400).data
    )
    object_grant(actor=admin, grantee=team, action=roles.USE_DEPLOYMENT, target=chat)
    key = (
        api(admin)
        .post("/api/v1/inference-keys/", {"name": "bot", "service_account": "invoicer", "deployments": ["chat"]})
        .data
    )
    assert key["owner"] == "service:invoicer" and key["team"] == "billing-team" and key["key"].startswith("llk_")
    disabled = api(admin).post(f"/api/v1/service-accounts/{account['id']}/disable/", expected=200).data
    assert not disabled["is_active"] and InferenceKey.objects.get(pk=key["id"]).revoked_at is not None

    quota = api(admin).call("put", f"/api/v1/team-quotas/{team.pk}/", 200, data={"rpm": 100, "tpd": 9000}).data
    assert (quota["team"], quota["rpm"], quota["tpm"], quota["tpd"]) == ("billing-team", 100, None, 9000)
    quota = api(admin).patch(f"/api/v1/team-quotas/{team.pk}/", {"tpm": 50}).data
    assert (quota["rpm"], quota["tpm"], quota["tpd"]) == (100, 50, 9000)
    assert "rpm" in api(admin).patch(f"/api/v1/team-quotas/{team.pk}/", {"rpm": 0}, 400).data
    listed = api(admin).get("/api/v1/team-quotas/").data["results"]
    assert {"billing-team", "apps"} <= {row["team"] for row in listed}

    api(engineer).get("/api/v1/service-accounts/", expected=403)  # no deploy in their team
    api(engineer).patch(f"/api/v1/team-quotas/{team.pk}/", {"rpm": 1}, 403)
    api(auditor).get("/api/v1/inference-keys/", expected=403)
    assert (
        api(engineer)
        .post("/api/v1/inference-keys/", {"name": "x", "service_account": "invoicer"}, 400)
        .data["service_account"]
    )  # another team's account reads as unknown

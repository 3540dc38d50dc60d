"""Recording: exactly one event per change, none after a rollback, denials survive, secrets never appear."""

from __future__ import annotations

import json

import pytest
from django.db import transaction

import audit
from audit.denials import record_denial
from audit.models import AuditEvent
from console import permissions
from console.accounts.models import Credential
from console.accounts.services import access, credentials, tokens
from console.permissions import ActionDenied
from tests.factories import PASSWORD, CredentialFactory

pytestmark = pytest.mark.django_db
CANARY = "hf_CANARY_5f2b7c9e0a4d4e1b8c3f6a9d2e7b0c4f"


def events(action: str | None = None):
    qs = AuditEvent.objects.order_by("id")
    return qs.filter(action=action) if action else qs


def test_one_event_per_change_and_none_for_a_no_op(admin, engineer):
    before = events().count()
    access.role_grant(actor=admin, user=engineer, role="auditor")
    access.role_grant(actor=admin, user=engineer, role="auditor")  # already held: no change, no event
    assert events().count() == before + 1
    event = events("role.granted").get()
    assert (event.actor_name, event.target_type, event.target_id) == (admin.username, "auth.user", str(engineer.pk))
    assert event.changes == {"roles": [["engineer"], ["engineer", "auditor"]]}
    assert event.roles == ["admin"]


def test_a_rolled_back_change_leaves_no_event(admin, engineer):
    before = events().count()
    with pytest.raises(RuntimeError), transaction.atomic():
        access.role_grant(actor=admin, user=engineer, role="auditor")
        raise RuntimeError("something later in the same transaction failed")
    assert events().count() == before
    assert "auditor" not in permissions.user_roles(engineer)


def test_a_denial_inside_an_atomic_service_survives_its_rollback(admin, engineer, auditor):
    with pytest.raises(ActionDenied) as denied, transaction.atomic():
        CredentialFactory(name="written-before-the-denial")
        access.role_grant(actor=engineer, user=auditor, role="admin")
    record_denial(denied.value)  # what the outermost handler does
    assert not Credential.objects.filter(name="written-before-the-denial").exists()
    event = events("permission.denied").get()
    assert event.actor_name == engineer.username and event.outcome == "denied"
    assert event.details["denied_action"] == "manage_users"


@pytest.mark.parametrize(
    ("method", "url", "status"),
    [
        ("post", "/api/v1/users/", 403),
        ("get", "/users/", 403),
        ("get", "/api/v1/credentials/{hidden}/", 404),
    ],
)
def test_denials_from_ui_and_api_are_recorded(client, engineer, nobody, method, url, status):
    hidden = CredentialFactory()
    user = nobody if "{hidden}" in url else engineer
    client.force_login(user)
    response = getattr(client, method)(url.format(hidden=hidden.pk), content_type="application/json")
    assert response.status_code == status
    event = events("permission.denied").get()
    assert event.actor_name == user.username and event.details["status"] == status
    assert event.source == ("api" if url.startswith("/api/") else "ui")


def test_login_logout_and_failed_login_are_recorded(client, auditor):
    client.post("/login/", {"username": auditor.username, "password": "wrong"}, REMOTE_ADDR="10.1.2.3")
    client.post("/login/", {"username": auditor.username, "password": PASSWORD}, REMOTE_ADDR="10.1.2.3")
    client.post("/logout/")
    failed, login, logout = events("auth.login_failed").get(), events("auth.login").get(), events("auth.logout").get()
    assert failed.actor_name == auditor.username and failed.outcome == "failure" and failed.client_ip == "10.1.2.3"
    assert login.actor_id == auditor.pk and logout.actor_id == auditor.pk
    assert "wrong" not in failed.detail + failed.diff


def test_request_context_is_on_the_event(api, admin, engineer):
    response = api(admin).call(
        "patch",
        f"/api/v1/users/{engineer.pk}/",
        200,
        data={"email": "e@example.test"},
        HTTP_X_REQUEST_ID="req-0123456789",
    )
    assert response["X-Request-ID"] == "req-0123456789"
    event = events("user.updated").get()
    assert event.source == "api" and event.request_id == "req-0123456789" and event.client_ip == "127.0.0.1"
    assert event.changes == {"email": ["erin-engineer@example.test", "e@example.test"]}


def test_every_console_service_records(admin, engineer):
    person = access.user_create(
        actor=admin, username="newbie", password="a-long-enough-passphrase", role_names=["engineer"]
    )
    access.user_set_active(actor=admin, user=person, active=False)
    access.roles_set(actor=admin, user=engineer, role_names=["engineer", "auditor"])
    credential = credentials.credential_create(actor=engineer, name="hf", value="hf_x")
    access.object_grant(actor=admin, grantee=person, action="view", target=credential)
    access.object_revoke(actor=admin, grantee=person, action="view", target=credential)
    credentials.credential_update(actor=engineer, credential=credential, value="hf_y")
    token, _raw = tokens.token_create(actor=engineer, user=engineer, name="ci")
    tokens.token_revoke(actor=engineer, token=token)
    credentials.secrets_rotate(actor=admin)
    credentials.credential_delete(actor=engineer, credential=credential)
    assert list(events().values_list("action", flat=True)) == [
        "user.created",
        "user.disabled",
        "role.granted",
        "credential.created",
        "grant.added",
        "grant.revoked",
        "credential.updated",
        "token.created",
        "token.revoked",
        "secret.rotated",
        "credential.deleted",
    ]


def test_a_canary_secret_is_in_no_event(api, admin, engineer):
    created = api(engineer).post("/api/v1/credentials/", {"name": "hf", "kind": "hf_token", "value": CANARY}).data
    api(engineer).call("patch", f"/api/v1/credentials/{created['id']}/", 200, data={"value": CANARY + "-2"})
    raw_token = api(engineer).post("/api/v1/tokens/", {"name": "ci"}).data["token"]
    credentials.secrets_rotate(actor=admin)
    api(engineer).call("delete", f"/api/v1/credentials/{created['id']}/", 204)
    dump = json.dumps(list(AuditEvent.objects.values()))
    assert CANARY not in dump and raw_token not in dump
    assert events("credential.updated").get().changes == {"value": ["********", "********"]}


def test_system_actor_and_explicit_identity():
    event = audit.record(action="system.started", actor=None)
    assert event.actor_name == "system" and event.actor_id is None and event.source == "system"

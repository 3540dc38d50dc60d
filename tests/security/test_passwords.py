"""Passwords: the owner changes theirs (audited, never the secret); an admin's temporary password locks the
console until its holder changes it; weak passwords are refused on the field, on every way in."""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from audit.models import AuditEvent
from console.accounts.services.tokens import token_create
from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db
NEW = "plum-orchard-lantern-47"
TEMPORARY = "temporary-copper-kettle-9"


def logged_in(user, password: str = PASSWORD) -> Client:
    client = Client()
    assert client.post("/login/", {"username": user.username, "password": password}).status_code == 302
    return client


def no_secret_in_the_log(*secrets: str) -> None:
    for event in AuditEvent.objects.all():
        text = event.detail + event.diff + event.target_name + event.actor_name
        assert not any(secret in text for secret in secrets), event.action


def test_a_user_changes_their_own_password_and_the_event_holds_no_secret(engineer):
    client = logged_in(engineer)
    assert 'id="password-change-link"' in client.get("/").content.decode()  # in the user menu
    response = client.post(
        "/account/password/",
        {"current_password": PASSWORD, "new_password": NEW, "new_password_again": NEW, "next": "/tokens/"},
    )
    assert response.status_code == 302 and response["Location"] == "/tokens/"
    assert client.get("/").status_code == 200  # this session stays signed in
    assert Client().post("/login/", {"username": engineer.username, "password": PASSWORD}).status_code == 200
    engineer.refresh_from_db()
    event = AuditEvent.objects.get(action="user.password_changed")
    assert event.actor_id == engineer.pk and event.target_id == str(engineer.pk)
    no_secret_in_the_log(PASSWORD, NEW, engineer.password, engineer.password.split("$")[-1])
    logged_in(engineer, NEW)


def test_the_api_changes_the_owners_password_with_the_current_one(engineer):
    api = APIClient()
    api.force_login(engineer)
    wrong = api.post("/api/v1/me/password/", {"current_password": "nope", "new_password": NEW}, format="json")
    assert wrong.status_code == 400 and "current_password" in wrong.json()
    done = api.post("/api/v1/me/password/", {"current_password": PASSWORD, "new_password": NEW}, format="json")
    assert done.status_code == 204
    assert api.get("/api/v1/me").status_code == 200
    assert AuditEvent.objects.filter(action="user.password_changed", actor_id=engineer.pk).count() == 1
    no_secret_in_the_log(PASSWORD, NEW)


@pytest.mark.parametrize(
    ("weak", "why"),
    [("short-pw", "too short"), ("password1234", "too common"), ("908123456712", "entirely numeric")],
)
def test_a_weak_password_is_refused_with_a_field_error(admin, engineer, weak, why):
    client = logged_in(engineer)
    page = client.post(
        "/account/password/", {"current_password": PASSWORD, "new_password": weak, "new_password_again": weak}
    )
    assert page.status_code == 400 and 'data-field-error="new_password"' in page.content.decode()
    assert why in page.content.decode()
    api = APIClient()
    api.force_login(admin)
    own = api.post("/api/v1/me/password/", {"current_password": PASSWORD, "new_password": weak}, format="json")
    assert own.status_code == 400 and why in own.json()["new_password"][0]
    reset = api.post(f"/api/v1/users/{engineer.pk}/password/", {"password": weak}, format="json")
    assert reset.status_code == 400 and why in reset.json()["password"][0]
    created = api.post("/api/v1/users/", {"username": "weakling", "password": weak}, format="json")
    assert created.status_code == 400 and why in created.json()["password"][0]
    assert not AuditEvent.objects.filter(action__startswith="user.password").exists()


def test_a_password_like_the_username_is_refused(engineer):
    client = logged_in(engineer)
    like = engineer.username + "-2"
    page = client.post(
        "/account/password/", {"current_password": PASSWORD, "new_password": like, "new_password_again": like}
    )
    assert page.status_code == 400 and "too similar" in page.content.decode()


def test_a_forced_reset_user_cannot_use_the_console_until_they_change_it(admin, engineer):
    old_session = logged_in(engineer)
    admin_client = logged_in(admin)
    response = admin_client.post(f"/users/{engineer.pk}/password/", {"password": TEMPORARY})
    assert response.status_code == 302
    assert old_session.get("/")["Location"].startswith("/login/")  # open sessions end with the reset

    client = logged_in(engineer, TEMPORARY)
    for page in ("/", "/deployments/", "/tokens/", "/credentials/"):
        response = client.get(page)
        assert response.status_code == 302 and response["Location"].startswith("/account/password/?next="), page
    assert client.post("/tokens/", {"name": "sneaky"})["Location"] == "/account/password/"
    api = client.get("/api/v1/deployments/")
    assert api.status_code == 403 and api.json()["code"] == "password_change_required"
    assert client.post("/api/v1/tokens/", {"name": "x"}, content_type="application/json").status_code == 403
    assert 'id="password-change-required"' in client.get("/account/password/").content.decode()

    response = client.post(
        "/account/password/",
        {"current_password": TEMPORARY, "new_password": NEW, "new_password_again": NEW, "next": "/deployments/"},
    )
    assert response["Location"] == "/deployments/"
    assert client.get("/").status_code == 200 and client.get("/api/v1/deployments/").status_code == 200
    reset, changed = (
        AuditEvent.objects.get(action="user.password_reset"),
        AuditEvent.objects.get(action="user.password_changed"),
    )
    assert reset.actor_id == admin.pk and reset.target_id == str(engineer.pk) and reset.details["must_change"]
    assert changed.details["was_required"] is True
    no_secret_in_the_log(PASSWORD, TEMPORARY, NEW)


def test_only_admins_reset_passwords(engineer, auditor):
    api = APIClient()
    api.force_login(engineer)
    assert api.post(f"/api/v1/users/{auditor.pk}/password/", {"password": TEMPORARY}, format="json").status_code == 403
    assert logged_in(engineer).post(f"/users/{auditor.pk}/password/", {"password": TEMPORARY}).status_code == 403
    logged_in(auditor)  # unchanged


def test_tokens_made_before_a_reset_keep_working_unless_the_admin_revokes_them(admin, engineer):
    _token, raw = token_create(actor=engineer, user=engineer, name="ci")
    bearer = APIClient()
    bearer.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    api = APIClient()
    api.force_login(admin)
    api.post(f"/api/v1/users/{engineer.pk}/password/", {"password": TEMPORARY}, format="json")
    assert bearer.get("/api/v1/me").json()["must_change_password"] is True
    assert bearer.get("/api/v1/deployments/").status_code == 200
    reset = {"password": TEMPORARY + "x", "revoke_tokens": True}
    assert api.post(f"/api/v1/users/{engineer.pk}/password/", reset, format="json").status_code == 204
    assert bearer.get("/api/v1/deployments/").status_code == 401
    assert AuditEvent.objects.filter(action="token.revoked").count() == 1


def test_validators_are_on_with_a_minimum_of_twelve(settings):
    names = [v["NAME"].rsplit(".", 1)[-1] for v in settings.AUTH_PASSWORD_VALIDATORS]
    assert names == [
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    ]
    assert settings.AUTH_PASSWORD_VALIDATORS[1]["OPTIONS"]["min_length"] == 12

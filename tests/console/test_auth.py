"""Login, logout and throttling per username and address."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.factories import PASSWORD

pytestmark = pytest.mark.django_db


def login(client: Client, username: str, password: str, ip: str = "10.0.0.1"):
    return client.post("/login/", {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_login_and_logout(engineer):
    client = Client()
    response = login(client, engineer.username, PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200
    assert client.post("/logout/").status_code == 302
    assert client.get("/")["Location"].startswith("/login/")


def test_wrong_password_shows_an_error_on_the_form(engineer):
    response = login(Client(), engineer.username, "wrong")
    assert response.status_code == 200
    assert 'id="login-error"' in response.content.decode()


def test_repeated_failures_lock_that_username_from_that_address(settings, engineer, auditor):
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        login(client, engineer.username, "wrong")
    locked = login(client, engineer.username, PASSWORD)
    assert locked.status_code == 429 and 'id="locked-out"' in locked.content.decode()
    # The same person from another address, and another person from this one, still get in.
    assert login(Client(), engineer.username, PASSWORD, ip="10.0.0.2").status_code == 302
    assert login(Client(), auditor.username, PASSWORD).status_code == 302


def test_session_and_csrf_cookies_are_protected(settings):
    assert settings.SESSION_COOKIE_HTTPONLY
    assert settings.SESSION_ENGINE == "django.contrib.sessions.backends.db"
    client = Client(enforce_csrf_checks=True)
    assert client.post("/login/", {"username": "x", "password": "y"}).status_code == 403

"""The API tokens page: creating a token redirects (a reload never makes a second one) and the value is shown once,
on the page the redirect leads to, with a copy button."""

from __future__ import annotations

import pytest

from console.accounts.models import ApiToken

pytestmark = pytest.mark.django_db


def test_creating_a_token_redirects_and_a_reload_creates_no_second_one(client, engineer):
    client.force_login(engineer)
    response = client.post("/tokens/", {"name": "ci pipeline", "scope": "read"})
    assert response.status_code == 302 and response["Location"] == "/tokens/"
    assert ApiToken.objects.filter(user=engineer).count() == 1

    shown = client.get("/tokens/")
    token = ApiToken.objects.get(user=engineer)
    page = shown.content.decode()
    assert 'id="new-token-value"' in page and 'id="new-token-copy"' in page
    value = page.split('id="new-token-value">', 1)[1].split("<", 1)[0]
    assert value.startswith(token.prefix) and token.digest != value
    assert "no-store" in shown["Cache-Control"]

    reloaded = client.get("/tokens/")  # what a reload of the redirected page sends
    assert value not in reloaded.content.decode() and 'id="new-token"' not in reloaded.content.decode()
    assert ApiToken.objects.filter(user=engineer).count() == 1


def test_the_token_value_waits_only_in_its_owners_session(client, engineer, admin):
    client.force_login(engineer)
    client.post("/tokens/", {"name": "mine"})
    other = type(client)()
    other.force_login(admin)
    assert 'id="new-token"' not in other.get("/tokens/").content.decode()
    assert 'id="new-token"' in client.get("/tokens/").content.decode()


def test_an_invalid_token_form_answers_400_and_creates_nothing(client, engineer):
    client.force_login(engineer)
    response = client.post("/tokens/", {"name": ""})
    assert response.status_code == 400
    assert not ApiToken.objects.filter(user=engineer).exists()

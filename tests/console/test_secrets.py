"""Secrets: encrypted at rest under a rotatable key, write-only through the API and the pages."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection

from console.accounts.models import Credential

pytestmark = pytest.mark.django_db
CANARY = "hf_CANARY_d41d8cd98f00b204e9800998ecf8427e"


def raw_column(pk: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT value FROM console_credential WHERE id = %s", [pk])
        return cursor.fetchone()[0]


def test_value_is_encrypted_at_rest_and_masked_in_python(api, engineer):
    response = api(engineer).post("/api/v1/credentials/", {"name": "hf", "kind": "hf_token", "value": CANARY})
    stored = raw_column(response.data["id"])
    assert CANARY not in stored
    credential = Credential.objects.get(pk=response.data["id"])
    assert credential.value.reveal() == CANARY
    assert CANARY not in f"{credential.value} {credential.value!r} {vars(credential)}"


def test_canary_never_appears_in_api_or_pages(api, client, engineer, admin):
    created = api(engineer).post("/api/v1/credentials/", {"name": "hf", "kind": "hf_token", "value": CANARY})
    pk = created.data["id"]
    outputs = [
        created.content,
        api(engineer).get("/api/v1/credentials/").content,
        api(admin).get(f"/api/v1/credentials/{pk}/").content,
        api(admin).call("patch", f"/api/v1/credentials/{pk}/", 200, data={"description": "x"}).content,
        api(admin).get("/api/v1/schema/").content,
    ]
    client.force_login(admin)
    outputs += [client.get("/credentials/").content, client.get(f"/credentials/{pk}/").content]
    for output in outputs:
        assert CANARY.encode() not in output
    assert created.data["value_set"] == "********"


def test_empty_secret_is_a_field_error(api, engineer):
    response = api(engineer).post(
        "/api/v1/credentials/", {"name": "hf", "kind": "hf_token", "value": "   "}, expected=400
    )
    assert "value" in response.data


def test_rotate_secrets_key_retires_the_old_key(settings, credential):
    old_key = settings.SECRETS_ENCRYPTION_KEYS[0]
    others = [Credential.objects.create(name=f"c{i}", value=f"secret-{i}") for i in range(3)]
    plain = {c.pk: Credential.objects.get(pk=c.pk).value.reveal() for c in [credential, *others]}
    new_key = Fernet.generate_key().decode()
    settings.SECRETS_ENCRYPTION_KEYS = [new_key, old_key]
    with pytest.raises(SystemExit):  # --check: 4 secrets still under the old key
        call_command("rotate_secrets_key", "--check")
    call_command("rotate_secrets_key")
    call_command("rotate_secrets_key", "--check")
    settings.SECRETS_ENCRYPTION_KEYS = [new_key]  # the old key is gone
    for pk, value in plain.items():
        assert Credential.objects.get(pk=pk).value.reveal() == value
        Fernet(new_key.encode()).decrypt(raw_column(pk).encode())


def test_a_missing_key_is_a_clear_configuration_error(settings, credential):
    from django.core.exceptions import ImproperlyConfigured

    settings.SECRETS_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(ImproperlyConfigured, match="rotate_secrets_key"):
        Credential.objects.get(pk=credential.pk)

"""Names people type are not markup. Before: the users page created `<script>alert(1)</script>` (escaped wherever
shown, but nothing else allowed it), and an imported model could be called anything up to 200 characters. Now a
username follows Django's rule on the page and in the API, and an import name the deployment-name rule."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from deployments.models import ModelRepo
from tests.factories import HostFactory

pytestmark = pytest.mark.django_db
MARKUP = "<script>alert(1)</script>"
PASSWORD = "a long enough Passphrase 42"


def test_a_username_with_markup_is_refused_on_the_page_and_in_the_api(client, admin, api):
    client.force_login(admin)
    page = client.post("/users/", {"username": MARKUP, "password": PASSWORD, "roles": ["engineer"]})
    assert page.status_code == 400  # was 302: the user existed
    assert "Enter a valid username" in page.content.decode()
    response = api(admin).post("/api/v1/users/", {"username": MARKUP, "password": PASSWORD}, expected=400)
    assert "username" in response.data
    assert not get_user_model().objects.filter(username=MARKUP).exists()
    api(admin).post("/api/v1/users/", {"username": "jane.doe@example", "password": PASSWORD}, expected=201)


@pytest.fixture
def store(settings):
    settings.MODEL_IMPORT_ROOTS = ["/srv/models"]
    return HostFactory(name="names-store", status="manual")


@pytest.mark.parametrize("name", ["<b>x</b>", "Org/Model", "x" * 64])
def test_an_import_name_follows_the_deployment_name_rule(client, engineer, api, store, name):
    refused = api(engineer).post(
        "/api/v1/models/import/", {"host": store.name, "directory": "/srv/models/m", "name": name}, expected=400
    )
    assert "name" in refused.data
    client.force_login(engineer)
    page = client.post("/models/import/", {"host": store.pk, "directory": "/srv/models/m", "name": name})
    assert page.status_code == 400 and 'data-field-error="name"' in page.content.decode()
    assert not ModelRepo.objects.filter(repo_id=name).exists()


def test_an_unnamed_import_is_named_after_its_directory_by_the_same_rule(client, engineer, api, store):
    api(engineer).post("/api/v1/models/import/", {"host": store.name, "directory": "/srv/models/Llama_3.1-8B"}, 202)
    client.force_login(engineer)
    client.post("/models/import/", {"host": store.pk, "directory": "/srv/models/<b>Tiny", "name": ""})
    names = set(ModelRepo.objects.values_list("repo_id", flat=True))
    assert {"llama-3-1-8b", "b-tiny"} <= names

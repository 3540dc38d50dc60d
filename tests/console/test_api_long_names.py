"""A 5,000-character name is a 400 naming the field from every API endpoint that creates or changes something, never
a 201 with the name cut short. The endpoints come from the OpenAPI schema, so a new one is walked too."""

from __future__ import annotations

import re

import pytest
from drf_spectacular.generators import SchemaGenerator

from deployments.gateway.keys import key_create
from deployments.models import AllowedImage, ModelArtifact
from tests.factories import DeploymentFactory, GpuFactory, HostFactory, ModelArtifactFactory, TeamFactory

pytestmark = pytest.mark.django_db

NAME_FIELDS = {"name", "username", "repo_id", "reference", "pattern"}
LONG = "n" * 5000


def _name_fields() -> list[tuple[str, str, str]]:
    """(method, path, field) for every write operation whose JSON body has a name-like string field."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    components = schema["components"]["schemas"]
    found = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method not in ("post", "put", "patch"):
                continue
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            ref = body.get("$ref", "").rsplit("/", 1)[-1]
            properties = components.get(ref, {}).get("properties", {})
            for field in sorted(NAME_FIELDS & set(properties)):
                if _is_text(properties[field]):
                    found.append((method, path, field))
    return found


def _is_text(prop: dict) -> bool:
    kinds = [prop, *prop.get("oneOf", [])]  # a blank-allowed field with a pattern is oneOf two strings
    return not prop.get("readOnly") and any(kind.get("type") == "string" for kind in kinds)


WRITES = _name_fields()


def test_the_walk_covers_the_endpoints_people_name_things_through():
    walked = {(method, path) for method, path, _field in WRITES}
    for expected in [
        ("post", "/api/v1/users/"),
        ("post", "/api/v1/teams/"),
        ("post", "/api/v1/tokens/"),
        ("post", "/api/v1/credentials/"),
        ("post", "/api/v1/hosts/"),
        ("post", "/api/v1/models/import/"),
        ("post", "/api/v1/deployments/"),
        ("post", "/api/v1/sources/"),
        ("post", "/api/v1/deployments/plan/"),
    ]:
        assert expected in walked, expected


@pytest.mark.parametrize(("method", "path", "field"), WRITES, ids=[f"{m.upper()} {p} {f}" for m, p, f in WRITES])
def test_a_5000_character_name_is_refused_naming_the_field(method, path, field, admin, credential, api):
    host = HostFactory(name="long-names")
    ids = {
        "users": admin.pk,
        "teams": TeamFactory().pk,
        "credentials": credential.pk,
        "hosts": host.pk,
        "gpus": GpuFactory(host=host).pk,
        "images": AllowedImage.objects.create(reference="registry.local/tgi:1").pk,
        "deployments": DeploymentFactory().pk,
        "models": ModelArtifactFactory(host=host).pk,
    }
    base = ModelArtifact.objects.get(pk=ids["models"])
    ids["adapters"] = ModelArtifactFactory(host=host, kind=ModelArtifact.Kind.ADAPTER, base=base).pk
    ids["inference-keys"] = key_create(actor=admin, name="long-names", all_deployments=True)[0].pk
    collection = re.match(r"/api/v1/([a-z-]+)/", path).group(1)
    url = path.replace("{id}", str(ids.get(collection, 0)))
    response = api(admin).call(method, url, 400, data={field: LONG})
    assert field in response.data, response.data  # the field is named, whatever else is missing

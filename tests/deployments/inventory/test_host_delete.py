"""Deleting a host that still holds model copies or deployments is refused with a reason (found by the API fuzz:
it was a 500 from the protected foreign keys)."""

from __future__ import annotations

import pytest

from deployments.models import Host
from tests.factories import DeploymentFactory, HostFactory, ModelArtifactFactory

pytestmark = pytest.mark.django_db


def test_a_host_with_a_model_copy_is_not_deleted_through_the_api(api, admin):
    artifact = ModelArtifactFactory()
    refused = api(admin).delete(f"/api/v1/hosts/{artifact.host.pk}/", expected=400).data
    assert "delete them first" in str(refused)
    assert Host.objects.filter(pk=artifact.host.pk).exists()


def test_a_host_with_a_deployment_is_not_deleted_from_its_page(client, admin):
    host = HostFactory()
    DeploymentFactory(host=host)
    client.force_login(admin)
    response = client.post(f"/inventory/hosts/{host.pk}/edit/", {"delete": "1"}, follow=True)
    assert response.status_code == 200 and "delete them first" in response.content.decode()
    assert Host.objects.filter(pk=host.pk).exists()


def test_an_empty_host_is_deleted(api, admin):
    host = HostFactory()
    api(admin).delete(f"/api/v1/hosts/{host.pk}/")
    assert not Host.objects.filter(pk=host.pk).exists()

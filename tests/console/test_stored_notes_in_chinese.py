"""Issue 13 item 11: sentences the console stores in English (a deployment's placement, an agent's note on a host
without GPUs) are shown in the reader's language, on the page and in the API."""

from __future__ import annotations

import pytest
from django.utils import translation

from deployments.inventory.notes import NO_GPU_FOUND, nvml_unavailable
from deployments.models import Deployment
from tests.factories import DeploymentFactory, HostFactory

pytestmark = pytest.mark.django_db
ZH = {"HTTP_ACCEPT_LANGUAGE": "zh-hans"}


def test_a_cpu_placement_reads_in_chinese(client, api, admin):
    host = HostFactory(name="vm")
    deployment = DeploymentFactory(state=Deployment.State.RUNNING, host=host, placement_note="CPU on vm")
    client.force_login(admin)
    page = client.get(f"/deployments/{deployment.pk}/", **ZH).content.decode()
    assert "CPU on vm" not in page
    with translation.override("zh-hans"):
        shown = deployment.placement_display
    assert shown != "CPU on vm" and "vm" in shown and shown in page
    answer = api(admin).get(f"/api/v1/deployments/{deployment.pk}/", **ZH).data
    assert answer["placement_note"] == shown
    with translation.override("en"):
        assert DeploymentFactory(host=host, gpu_indexes=[0, 1]).placement_display == "GPU 0,1 on vm"


def test_the_nvml_note_reads_in_chinese_with_the_librarys_detail_kept(client, admin):
    host = HostFactory(discovery_note=nvml_unavailable("NVML Shared Library Not Found"))
    other = HostFactory(discovery_note=NO_GPU_FOUND)
    client.force_login(admin)
    page = client.get(f"/inventory/hosts/{host.pk}/", **ZH).content.decode()
    assert "is not available on this host" not in page and "NVML Shared Library Not Found" in page
    assert "NVML found no GPU" not in client.get(f"/inventory/hosts/{other.pk}/", **ZH).content.decode()

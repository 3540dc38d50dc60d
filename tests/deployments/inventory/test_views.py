"""Inventory pages and API: admins change it (audited), everyone with a role reads it."""

from __future__ import annotations

import pytest

from audit.models import AuditEvent
from deployments.models import Gpu, GpuReservation, Host

pytestmark = pytest.mark.django_db
GB = 10**9


@pytest.fixture
def node(admin):
    from deployments.inventory.services import gpu_create, host_create

    host = host_create(actor=admin, name="gpu-node-1", address="10.0.0.5", labels={"zone": "a"})
    for index in range(2):
        gpu_create(
            actor=admin,
            host=host,
            index=index,
            name="NVIDIA A100-SXM4-80GB",
            memory_total=80 * GB,
            nvlink_group="nvlink-0",
        )
    return host


def test_admin_adds_a_host_and_a_gpu_through_the_forms(client, admin):
    client.force_login(admin)
    response = client.post(
        "/inventory/hosts/new/",
        {
            "name": "gpu-node-9",
            "address": "10.0.0.9",
            "labels": "zone=b, tier=prod",
            "runtime": "docker",
            "status": "manual",
        },
    )
    host = Host.objects.get(name="gpu-node-9")
    assert response.status_code == 302 and host.labels == {"zone": "b", "tier": "prod"}
    response = client.post(
        f"/inventory/hosts/{host.pk}/gpus/new/", {"index": 0, "name": "NVIDIA L40S", "memory_gb": "48", "health": "ok"}
    )
    assert response.status_code == 302
    assert Gpu.objects.get(host=host).memory_total == 48 * GB
    assert list(AuditEvent.objects.exclude(action="auth.login").order_by("id").values_list("action", flat=True)) == [
        "host.created",
        "gpu.created",
    ]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "Bad Name!", "runtime": "docker", "status": "manual"}, "name"),
        ({"name": "ok-name", "runtime": "docker", "status": "manual", "labels": "zone"}, "labels"),
        ({"name": "ok-name", "runtime": "docker", "status": "online"}, "status"),
    ],
)
def test_bad_host_input_is_a_field_error(client, admin, data, field):
    client.force_login(admin)
    response = client.post("/inventory/hosts/new/", data)
    assert response.status_code == 400
    assert f'data-field-error="{field}"' in response.content.decode()
    assert not AuditEvent.objects.filter(action="host.created").exists()


def test_duplicate_gpu_index_is_refused_where_the_user_is(client, admin, node):
    client.force_login(admin)
    response = client.post(
        f"/inventory/hosts/{node.pk}/gpus/new/", {"index": 1, "name": "x", "memory_gb": "80", "health": "ok"}
    )
    assert response.status_code == 400 and "already has a GPU 1" in response.content.decode()


def test_detail_shows_free_versus_reserved_and_history_only_to_data_viewers(client, admin, engineer, auditor, node):
    gpu = node.gpus.get(index=0)
    GpuReservation.objects.create(gpu=gpu, memory_bytes=30 * GB, holder="deployment:1")
    for user, sees_history in ((admin, True), (auditor, True), (engineer, False)):
        client.force_login(user)
        page = client.get(f"/inventory/hosts/{node.pk}/").content.decode()
        assert "30.0 GB" in page and "50.0 GB" in page  # reserved, unreserved
        assert ('data-history-action="gpu.created"' in page) is sees_history
        assert ('id="history-hidden"' in page) is not sees_history


def test_reserved_gpu_cannot_be_deleted(client, admin, node):
    gpu = node.gpus.get(index=0)
    GpuReservation.objects.create(gpu=gpu, memory_bytes=GB, holder="deployment:1")
    client.force_login(admin)
    client.post(f"/inventory/gpus/{gpu.pk}/edit/", {"delete": "1"})
    assert Gpu.objects.filter(pk=gpu.pk).exists()
    assert not AuditEvent.objects.filter(action="gpu.deleted").exists()


def test_host_list_search_and_empty_state(client, engineer, node):
    client.force_login(engineer)
    assert 'data-host="gpu-node-1"' in client.get("/inventory/?q=node-1").content.decode()
    assert "No host matches." in client.get("/inventory/?q=nothing").content.decode()


def test_api_reads_and_changes_are_audited(api, admin, engineer, node):
    hosts = api(engineer).get("/api/v1/hosts/").data["results"]
    assert hosts[0]["name"] == "gpu-node-1" and len(hosts[0]["gpus"]) == 2
    api(engineer).post("/api/v1/hosts/", {"name": "x1"}, expected=403)
    created = api(admin).post("/api/v1/hosts/", {"name": "api-node", "labels": {"zone": "c"}}).data
    api(admin).post("/api/v1/hosts/", {"name": "bad", "labels": ["not", "a", "map"]}, expected=400)
    api(admin).post("/api/v1/hosts/", {"name": "bad2", "status": "online"}, expected=400)
    api(admin).call("patch", f"/api/v1/hosts/{created['id']}/", 200, data={"address": "10.9.9.9"})
    gpu = (
        api(admin)
        .post(
            "/api/v1/gpus/", {"host": "api-node", "index": 0, "name": "H100", "memory_total": 80 * GB, "health": "ok"}
        )
        .data
    )
    assert [g["index"] for g in api(engineer).get("/api/v1/gpus/?host__name=api-node").data["results"]] == [0]
    api(admin).call("patch", f"/api/v1/gpus/{gpu['id']}/", 400, data={"host": "gpu-node-1"})
    api(admin).call("delete", f"/api/v1/gpus/{gpu['id']}/", 204)
    api(admin).call("delete", f"/api/v1/hosts/{created['id']}/", 204)
    assert list(
        AuditEvent.objects.filter(target_name__contains="api-node").order_by("id").values_list("action", flat=True)
    ) == ["host.created", "host.updated", "gpu.created", "gpu.deleted", "host.deleted"]

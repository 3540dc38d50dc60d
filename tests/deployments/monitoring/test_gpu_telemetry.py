"""What the console keeps of agents' GPU readings: the last reading on the GPU, the exporter's address on the host,
one 1-minute sample per GPU merged from the minute's heartbeats; and what a change of health does (audited, the
deployments on a failed GPU flagged and cleared, the host page saying why)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from deployments.inventory.services import gpu_update, host_report
from deployments.models import Deployment, DeploymentReplica, Gpu, GpuSample, Host
from tests.factories.inventory import HostFactory
from tests.factories.serving import DeploymentFactory, DeploymentSpecFactory
from workers.nvml import DiscoveredGpu, Discovery

pytestmark = pytest.mark.django_db
GB = 10**9
T0 = datetime(2026, 12, 1, 12, 0, 5, tzinfo=UTC)


def discovery(count: int = 2) -> Discovery:
    gpus = [
        DiscoveredGpu(
            index=i,
            uuid=f"GPU-{i}",
            name="NVIDIA H200",
            memory_total=141 * GB,
            memory_free=141 * GB,
            power_limit_w=700.0,
            compute_capability="9.0",
            serial=f"S{i}",
            nvlink_group="",
        )
        for i in range(count)
    ]
    return Discovery(driver_version="580.1", cuda_version="13.0", gpus=gpus)


def reading(index: int, **fields) -> dict:
    return {
        "index": index,
        "uuid": f"GPU-{index}",
        "utilization": 10.0,
        "memory_used": 1 * GB,
        "memory_total": 141 * GB,
        "temperature": 40.0,
        "power_w": 100.0,
        "power_limit_w": 700.0,
        "throttle_reasons": 0,
        "ecc_corrected": 0,
        "ecc_uncorrected": 0,
        "retired_pages_pending": False,
        "remapped_rows_pending": False,
        "remapped_rows_failed": False,
        "xids": [],
        **fields,
    }


@pytest.fixture
def clock(monkeypatch):
    """host_report's time, moved by the test."""
    now = {"t": T0}
    monkeypatch.setattr(timezone, "now", lambda: now["t"])
    return now


def beat(telemetry: list[dict], **kwargs) -> Host:
    return host_report(name="node", discovery=discovery(), agent_version="t", telemetry=telemetry, **kwargs)


def test_the_last_reading_is_kept_per_gpu_matched_by_uuid_and_the_exporter_address_on_the_host(clock):
    # Readings listed out of order and one with another index: the uuid decides.
    host = beat([reading(1, temperature=55.0), {**reading(0, temperature=41.0), "index": 7}], metrics_address="n:9835")
    gpus = {gpu.index: gpu for gpu in host.gpus.all()}
    assert gpus[0].telemetry["temperature"] == 41.0 and gpus[1].telemetry["temperature"] == 55.0
    assert gpus[0].telemetry_at == T0 and gpus[0].health == "ok"
    assert host.metrics_address == "n:9835"
    assert beat([reading(0), reading(1)]).metrics_address == "n:9835"  # an empty address keeps the last one
    # No telemetry (an agent without it): the GPUs keep what they had.
    host_report(name="node", discovery=discovery(), agent_version="t")
    assert Gpu.objects.get(host=host, index=1).telemetry["temperature"] == 40.0


def test_the_heartbeats_of_one_minute_merge_into_one_sample(clock):
    beat([reading(0, utilization=20.0, throttle_reasons=0x20, ecc_corrected=1), reading(1)])
    clock["t"] = T0 + timedelta(seconds=30)
    beat([reading(0, utilization=60.0, throttle_reasons=0x4, ecc_corrected=3, temperature=None), reading(1)])
    clock["t"] = T0 + timedelta(seconds=50)
    beat([reading(0, utilization=100.0, xids=[13, 94], remapped_rows_pending=True), reading(1)])
    clock["t"] = T0 + timedelta(seconds=60)
    beat([reading(0), reading(1)])
    gpu = Gpu.objects.get(index=0)
    first, second = GpuSample.objects.filter(gpu=gpu).order_by("at")
    assert first.at == T0.replace(second=0) and first.resolution == 60 and first.readings == 3
    assert first.utilization == pytest.approx(60.0)  # (20 + 60 + 100) / 3
    assert first.temperature == pytest.approx(40.0)  # a missing gauge does not pull the mean
    assert first.throttle_reasons == 0x24 and first.ecc_corrected == 0  # OR-ed; the last count
    assert first.xid == 94 and first.remapped_rows_pending is True
    assert (second.readings, second.xid, second.remapped_rows_pending) == (1, None, False)
    assert GpuSample.objects.count() == 4  # one per GPU per minute


def test_a_failed_gpu_is_audited_flags_its_deployments_and_an_admin_clears_it(clock, admin, client, api):
    host = beat([reading(0), reading(1)])
    gpu0 = Gpu.objects.get(host=host, index=0)
    running = DeploymentFactory(host=host, gpu_indexes=[0], state=Deployment.State.RUNNING)
    other_gpu = DeploymentFactory(host=host, gpu_indexes=[1], state=Deployment.State.RUNNING)
    stopped = DeploymentFactory(host=host, gpu_indexes=[0], state=Deployment.State.STOPPED)
    # A deployment whose own server runs elsewhere and whose replica 1 holds GPU 0.
    replicated = DeploymentFactory(host=HostFactory(), gpu_indexes=[0], state=Deployment.State.RUNNING)
    DeploymentReplica.objects.create(
        deployment=replicated, index=1, host=host, gpu_indexes=[0], state=Deployment.State.RUNNING
    )

    clock["t"] = T0 + timedelta(seconds=30)
    beat([reading(0, xids=[79]), reading(1)])
    gpu0.refresh_from_db()
    assert (gpu0.health, gpu0.health_cause) == ("failed", "xid-79")
    assert "fallen off the bus" in gpu0.health_detail and gpu0.health_changed_at == clock["t"]
    event = AuditEvent.objects.get(action="gpu.health_changed")
    assert event.actor_name == "agent:node" and '"health":["ok","failed"]' in event.diff
    running.refresh_from_db()
    [flag] = running.flags
    assert (flag["cause"], flag["subject"]) == ("gpu-failed", "node/gpu0")
    assert "fallen off the bus" in flag["detail"] and "reset" in flag["next_step"]
    assert Deployment.objects.get(pk=other_gpu.pk).flags == [] and Deployment.objects.get(pk=stopped.pk).flags == []
    assert [f["subject"] for f in Deployment.objects.get(pk=replicated.pk).flags] == ["node/gpu0"]
    # The deployment's page and API say it, with the next step.
    DeploymentSpecFactory(deployment=running, current=True)
    client.force_login(admin)
    page = client.get(f"/deployments/{running.pk}/").content.decode()
    assert 'data-flag="gpu-failed"' in page and "GPU node/gpu0 failed" in page and "nvidia-smi -r" in page
    assert 'data-flag="' not in client.get(f"/deployments/{other_gpu.pk}/").content.decode()
    [api_flag] = api(admin).get(f"/api/v1/deployments/{running.pk}/").data["flags"]
    assert api_flag["cause"] == "gpu-failed" and api_flag["next_step"] == flag["next_step"]

    # Clean readings do not clear a GPU that fell off the bus; nor does it turn "missing" when it vanishes.
    clock["t"] = T0 + timedelta(seconds=60)
    beat([reading(0), reading(1)])
    host_report(name="node", discovery=discovery(count=1), agent_version="t", telemetry=[reading(0)])
    host_report(name="node", discovery=Discovery(driver_version="580.1", gpus=[]), agent_version="t")
    assert Gpu.objects.get(pk=gpu0.pk).health == "failed"
    assert AuditEvent.objects.filter(action="gpu.health_changed").count() == 1

    gpu_update(actor=admin, gpu=Gpu.objects.get(pk=gpu0.pk), health=Gpu.Health.OK)
    gpu0.refresh_from_db()
    assert (gpu0.health, gpu0.health_cause, gpu0.health_detail) == ("ok", "", "")
    assert Deployment.objects.get(pk=running.pk).flags == [] and Deployment.objects.get(pk=replicated.pk).flags == []
    changed = AuditEvent.objects.filter(action="gpu.health_changed").order_by("id").last()
    assert changed.actor_name == admin.username and '"health":["failed","ok"]' in changed.diff
    assert AuditEvent.objects.filter(action="deployment.flag_cleared").count() == 2


def test_degraded_and_back_follows_the_readings_and_the_host_page_says_why(clock, client, admin):
    host = beat([reading(0), reading(1)])
    beat([reading(0, retired_pages_pending=True), reading(1)])
    gpu0 = Gpu.objects.get(host=host, index=0)
    assert (gpu0.health, gpu0.health_cause) == ("degraded", "retired-pages-pending")
    client.force_login(admin)
    page = client.get(f"/inventory/hosts/{host.pk}/").content.decode()
    assert 'data-health="degraded"' in page and "Retired memory pages are pending" in page
    beat([reading(0), reading(1)])  # after the reset: nothing pending
    assert Gpu.objects.get(pk=gpu0.pk).health == "ok"
    assert list(
        AuditEvent.objects.filter(action="gpu.health_changed").order_by("id").values_list("diff", flat=True)
    ) == [
        '{"health":["ok","degraded"],"health_cause":["","retired-pages-pending"]}',
        '{"health":["degraded","ok"],"health_cause":["retired-pages-pending",""]}',
    ]


def test_a_missing_gpu_comes_back_healthy_but_a_degraded_one_is_not_made_healthy_by_discovery(clock):
    host = beat([reading(0), reading(1)])
    Gpu.objects.filter(host=host, index=0).update(health=Gpu.Health.MISSING)
    Gpu.objects.filter(host=host, index=1).update(health=Gpu.Health.DEGRADED)  # set by hand
    beat([])  # discovery without readings
    assert dict(Gpu.objects.filter(host=host).values_list("index", "health")) == {0: "ok", 1: "degraded"}

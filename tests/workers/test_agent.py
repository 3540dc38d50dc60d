"""The host agent: NVML discovery (a stand-in built on real H200 readings), reports, offline sweep."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db.models.functions import Now

from audit.models import AuditEvent
from deployments.inventory.services import host_report, hosts_mark_offline
from deployments.models import Gpu, Host
from tests.support import fake_nvml
from workers.nvml import discover


def actions() -> list[str]:
    return list(AuditEvent.objects.order_by("id").values_list("action", flat=True))


def test_discovery_reads_the_h200_reading():
    found = discover(fake_nvml)
    assert (found.driver_version, found.cuda_version, found.note) == ("580.159.04", "13.0", "")
    [gpu] = found.gpus
    assert gpu.name == "NVIDIA H200" and gpu.memory_total == 150754820096 and gpu.power_limit_w == 700.0
    assert gpu.compute_capability == "9.0" and gpu.nvlink_group == ""  # NVLink NotSupported: PCIe only


def test_without_nvml_the_host_registers_with_no_gpu_and_says_why(monkeypatch):
    monkeypatch.setenv("FAKE_NVML_MISSING", "1")
    found = discover(fake_nvml)
    assert found.gpus == [] and "NVML is not available" in found.note


@pytest.mark.django_db
def test_reports_register_once_and_record_only_hardware_changes(monkeypatch):
    host = host_report(name="gpu-node-1", discovery=discover(fake_nvml), agent_version="t")
    assert host.status == "online" and host.last_heartbeat is not None and host.gpus.count() == 1
    assert actions() == ["host.registered", "gpu.discovered"]
    host_report(name="gpu-node-1", discovery=discover(fake_nvml), agent_version="t")  # a plain heartbeat
    assert actions() == ["host.registered", "gpu.discovered"]
    monkeypatch.setenv("FAKE_NVML_GPUS", "2")
    host_report(name="gpu-node-1", discovery=discover(fake_nvml), agent_version="t")
    monkeypatch.setenv("FAKE_NVML_GPUS", "1")
    host_report(name="gpu-node-1", discovery=discover(fake_nvml), agent_version="t")
    assert actions()[2:] == ["gpu.discovered", "gpu.missing"]
    assert Gpu.objects.get(host=host, index=1).health == "missing"
    event = AuditEvent.objects.get(action="host.registered")
    assert event.actor_name == "agent:gpu-node-1" and event.actor_id is None


@pytest.mark.django_db
def test_a_host_without_heartbeats_goes_offline_by_database_time(settings):
    host_report(name="quiet", discovery=discover(fake_nvml), agent_version="t")
    host_report(name="chatty", discovery=discover(fake_nvml), agent_version="t")
    long_ago = Now() - timedelta(seconds=settings.HOST_OFFLINE_SECONDS + 5)
    Host.objects.filter(name="quiet").update(last_heartbeat=long_ago)
    assert [h.name for h in hosts_mark_offline()] == ["quiet"]
    assert Host.objects.get(name="quiet").status == "offline" and Host.objects.get(name="chatty").status == "online"
    assert AuditEvent.objects.filter(action="host.offline", target_name="quiet").count() == 1
    host_report(name="quiet", discovery=discover(fake_nvml), agent_version="t")  # it comes back
    assert Host.objects.get(name="quiet").status == "online"
    assert AuditEvent.objects.filter(action="host.online").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_real_agent_worker_heartbeats_serves_its_queue_and_goes_offline_when_killed(redis_url, celery_db_queue):
    from tests.conftest import _start_worker, _test_database_url
    from workers.agent import describe, mark_offline

    name = "agent-test-node"
    agent, log = _start_worker(
        {
            "REDIS_URL": redis_url,
            "DATABASE_URL": _test_database_url(),
            "AGENT_HOST_NAME": name,
            "AGENT_NVML_MODULE": "tests.support.fake_nvml",
            "FAKE_NVML_GPUS": "2",
            "AGENT_HEARTBEAT_SECONDS": "1",
        },
        "agent",
        f"host.{name}",
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not Host.objects.filter(name=name).exists():
            assert agent.poll() is None, Path(log.name).read_text()[-2000:]
            time.sleep(0.2)
        host = Host.objects.get(name=name)
        assert host.status == "online" and host.gpus.count() == 2 and host.driver_version == "580.159.04"
        first = host.last_heartbeat
        time.sleep(2.5)
        assert Host.objects.get(name=name).last_heartbeat > first  # heartbeats keep coming
        answer = describe.apply_async(queue=f"host.{name}").get(timeout=20)  # its own queue
        assert answer == {"host": name, "gpus": ["NVIDIA H200", "NVIDIA H200"], "note": ""}
    finally:
        agent.kill()  # like a host that lost power
        agent.wait()
        log.close()
    time.sleep(2.5)
    offline = mark_offline.apply_async(kwargs={"offline_after": 2}, queue=celery_db_queue).get(timeout=20)
    assert name in offline
    assert Host.objects.get(name=name).status == "offline"
    assert AuditEvent.objects.filter(action="host.offline", target_name=name).exists()

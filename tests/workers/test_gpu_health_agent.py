"""Show: a GPU fails and the fleet notices. The agent reads a two-GPU host through the NVML stand-in (real H200
readings; XIDs delivered through NVML's event API) and reports with workers.agent.report_once. An XID 79 on GPU 0 and
a rising uncorrectable ECC count on GPU 1 fail them: each change is audited, the deployment on the GPU is flagged
with the cause and the next step, and placement stops choosing it. A reset (the volatile count back to 0) brings
GPU 1 back; a GPU that fell off the bus waits for an admin."""

from __future__ import annotations

import json
import time

import pytest

from audit.models import AuditEvent
from deployments.inventory.placement import PlacementError, Requirement, place
from deployments.inventory.selectors import host_states
from deployments.inventory.services import gpu_update, reserve_gpus
from deployments.models import Deployment, Gpu, Host
from deployments.units import GB
from tests.factories.serving import DeploymentFactory
from tests.support import fake_nvml
from workers import agent

pytestmark = pytest.mark.django_db
NAME = "show-node"


@pytest.fixture
def nvml_state(tmp_path, monkeypatch, settings):
    """The stand-in's live state file and an agent (its XID listener, no exporter) for the test's length."""
    path = tmp_path / "nvml-state.json"
    path.write_text("{}")
    monkeypatch.setenv("FAKE_NVML_GPUS", "2")
    monkeypatch.setenv("FAKE_NVML_STATE", str(path))
    monkeypatch.setattr(fake_nvml, "_delivered", {})  # XIDs handed out by an earlier test's state file
    settings.AGENT_NVML_MODULE = "tests.support.fake_nvml"
    settings.AGENT_METRICS_PORT = 0
    settings.AGENT_GPU_METRICS_SOURCE = "nvml"
    settings.MODEL_STORE = tmp_path / "models"
    telemetry = agent.Telemetry()
    telemetry.start(NAME)
    monkeypatch.setattr(agent, "_telemetry", telemetry)
    yield lambda state: path.write_text(json.dumps(state))
    telemetry.stop()


def report_until(condition, what: str, timeout: float = 10.0) -> Host:
    """Heartbeats until `condition()` holds: an XID reaches the agent through the listener thread, not at once."""
    deadline = time.monotonic() + timeout
    while True:
        host = agent.report_once(NAME)
        if condition():
            return host
        assert time.monotonic() < deadline, f"no heartbeat showed {what} within {timeout} s"
        time.sleep(0.2)


def health(index: int) -> tuple[str, str]:
    gpu = Gpu.objects.get(host__name=NAME, index=index)
    return gpu.health, gpu.health_cause


def one_gpu_placement() -> tuple[int, ...]:
    return place(Requirement(memory_per_gpu=20 * GB), host_states(Host.objects.filter(name=NAME))).gpu_indexes


def test_an_xid_79_and_an_uncorrectable_ecc_error_fail_gpus_flag_deployments_and_steer_placement(nvml_state, admin):
    host = agent.report_once(NAME)
    assert [(g.index, g.health) for g in host.gpus.order_by("index")] == [(0, "ok"), (1, "ok")]
    assert Gpu.objects.get(host=host, index=0).telemetry["memory_total"] == 150754820096
    assert one_gpu_placement() == (0,)  # both fit; the lower index wins a tie
    on_gpu0 = DeploymentFactory(name="chat", host=host, gpu_indexes=[0], state=Deployment.State.RUNNING)
    on_gpu1 = DeploymentFactory(name="embed", host=host, gpu_indexes=[1], state=Deployment.State.RUNNING)
    reserve_gpus(holder=f"deployment:{on_gpu0.pk}", host=host, gpu_indexes=[0], memory_bytes=10 * GB)

    # GPU 0 falls off the bus: the driver raises XID 79, NVML's event set delivers it.
    nvml_state({"0": {"xids": [79]}})
    report_until(lambda: health(0)[0] == "failed", "GPU 0 failed")
    assert health(0) == ("failed", "xid-79") and health(1) == ("ok", "")
    [flag] = Deployment.objects.get(pk=on_gpu0.pk).flags
    assert (flag["cause"], flag["subject"]) == ("gpu-failed", f"{NAME}/gpu0")
    assert "XID 79" in flag["detail"] and flag["next_step"].startswith("Drain the GPU, then reset it")
    assert Deployment.objects.get(pk=on_gpu1.pk).flags == []
    assert one_gpu_placement() == (1,)  # GPU 0, partly reserved, is the tighter fit: skipped all the same

    # GPU 1's volatile uncorrectable ECC count rises.
    nvml_state({"0": {"xids": [79]}, "1": {"ecc_uncorrected": 2}})
    agent.report_once(NAME)
    assert health(1) == ("failed", "ecc-uncorrectable")
    [flag] = Deployment.objects.get(pk=on_gpu1.pk).flags
    assert flag["subject"] == f"{NAME}/gpu1" and "uncorrectable ECC" in flag["detail"]
    with pytest.raises(PlacementError):
        one_gpu_placement()

    # GPU 1 is reset: volatile counts start again at 0 and it is healthy; GPU 0's clean readings change nothing.
    nvml_state({"0": {"xids": [79]}, "1": {"ecc_uncorrected": 0}})
    agent.report_once(NAME)
    assert health(1) == ("ok", "") and health(0) == ("failed", "xid-79")
    assert Deployment.objects.get(pk=on_gpu1.pk).flags == [] and len(Deployment.objects.get(pk=on_gpu0.pk).flags) == 1
    assert one_gpu_placement() == (1,)

    # An admin who replaced GPU 0 marks it healthy: the flag goes, placement may use it again.
    gpu_update(actor=admin, gpu=Gpu.objects.get(host=host, index=0), health=Gpu.Health.OK)
    agent.report_once(NAME)
    assert health(0) == ("ok", "") and Deployment.objects.get(pk=on_gpu0.pk).flags == []

    changes = [
        (event.target_name.split(" ")[0], json.loads(event.diff)["health"], event.actor_name)
        for event in AuditEvent.objects.filter(action="gpu.health_changed").order_by("id")
    ]
    assert changes == [
        (f"{NAME}/gpu0", ["ok", "failed"], f"agent:{NAME}"),
        (f"{NAME}/gpu1", ["ok", "failed"], f"agent:{NAME}"),
        (f"{NAME}/gpu1", ["failed", "ok"], f"agent:{NAME}"),
        (f"{NAME}/gpu0", ["failed", "ok"], admin.username),
    ]
    flagged = AuditEvent.objects.filter(action__in=("deployment.flagged", "deployment.flag_cleared")).order_by("id")
    assert [(e.action, e.target_name) for e in flagged] == [
        ("deployment.flagged", "chat"),
        ("deployment.flagged", "embed"),
        ("deployment.flag_cleared", "embed"),
        ("deployment.flag_cleared", "chat"),
    ]

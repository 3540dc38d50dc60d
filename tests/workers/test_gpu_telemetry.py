"""GPU telemetry through NVML (workers.nvml.read_telemetry, XidListener) on the H200 stand-in, and the agent's
heartbeat carrying it to the console."""

from __future__ import annotations

import inspect
import json
import os
import time

import pynvml
import pytest

from tests.support import fake_nvml
from workers.nvml import GpuTelemetry, XidListener, read_telemetry


@pytest.fixture
def gpu_state(tmp_path, monkeypatch):
    """Write the fake GPUs' overrides (FAKE_NVML_STATE); the fake re-reads them on every call."""
    path = tmp_path / "nvml-state.json"
    monkeypatch.setenv("FAKE_NVML_STATE", str(path))
    monkeypatch.setattr(fake_nvml, "_delivered", {})  # XIDs delivered belong to one test

    def write(state: dict) -> None:  # whole or not at all: the listener's thread reads it meanwhile
        path.with_suffix(".tmp").write_text(json.dumps(state))
        os.replace(path.with_suffix(".tmp"), path)

    write({})
    return write


def test_an_idle_h200_reads_as_the_fixture_says():
    (reading,) = read_telemetry(fake_nvml)
    assert reading == GpuTelemetry(
        index=0,
        uuid="GPU-00000000-1111-2222-3333-444444444400",
        utilization=0.0,
        memory_used=644939776,
        memory_total=150754820096,
        temperature=39.0,
        power_w=118.565,
        power_limit_w=700.0,
        sm_clock_mhz=345.0,
        memory_clock_mhz=3199.0,
        throttle_reasons=1,  # idle
        ecc_corrected=0,
        ecc_uncorrected=0,
        retired_pages_single=None,  # Hopper remaps rows instead: NVML answers NotSupported
        retired_pages_double=None,
        retired_pages_pending=False,
        remapped_rows_correctable=0,
        remapped_rows_uncorrectable=0,
        remapped_rows_pending=False,
        remapped_rows_failed=False,
        xids=(),
    )


def test_overrides_are_read_on_every_call_and_stay_on_their_gpu(gpu_state, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_GPUS", "2")
    gpu_state({"1": {"temperature": 92, "throttle_reasons": 64, "ecc_uncorrected": 2, "retired_pages_pending": True}})
    cool, hot = read_telemetry(fake_nvml)
    assert (cool.temperature, cool.throttle_reasons, cool.ecc_uncorrected) == (39.0, 1, 0)
    assert (hot.temperature, hot.throttle_reasons, hot.ecc_uncorrected) == (92.0, 64, 2)
    assert hot.retired_pages_pending is True

    gpu_state({"1": {"remapped_rows_pending": True, "remapped_rows_uncorrectable": 3, "retired_pages_double": 2}})
    _, hot = read_telemetry(fake_nvml)
    assert hot.temperature == 39.0  # the earlier override is gone
    assert (hot.remapped_rows_pending, hot.remapped_rows_uncorrectable, hot.retired_pages_double) == (True, 3, 2)


def test_a_field_nvml_cannot_read_is_none_and_the_rest_is_read(gpu_state):
    gpu_state({"0": {"not_supported": ["temperature", "power_w", "sm_clock_mhz", "ecc_corrected", "remapped_rows"]}})
    (reading,) = read_telemetry(fake_nvml)
    assert reading.temperature is None and reading.power_w is None and reading.sm_clock_mhz is None
    assert reading.ecc_corrected is None and reading.remapped_rows_correctable is None
    assert reading.remapped_rows_pending is False
    assert reading.memory_clock_mhz == 3199.0 and reading.ecc_uncorrected == 0 and reading.power_limit_w == 700.0


def test_without_the_driver_there_are_no_readings_and_no_error(monkeypatch):
    monkeypatch.setenv("FAKE_NVML_MISSING", "1")
    assert read_telemetry(fake_nvml) == []
    assert read_telemetry(pynvml) == []  # the real module on this GPU-less machine: no libnvidia-ml


def test_an_xid_is_delivered_once_to_each_reader(gpu_state):
    listener = XidListener(fake_nvml, wait_ms=50)
    heartbeat, exporter = listener.cursor(), listener.cursor()
    listener.start()
    try:
        assert listener.ready.wait(5)
        gpu_state({"0": {"xids": [79]}})
        assert _xids_within(heartbeat, 5) == (79,)
        assert read_telemetry(fake_nvml, heartbeat)[0].xids == ()  # taken: the next reading has none
        assert read_telemetry(fake_nvml, exporter)[0].xids == (79,)  # the other reader still gets it

        gpu_state({"0": {"xids": [79, 48, 79]}})  # a log: two more
        assert _xids_within(heartbeat, 5) == (48, 79)
    finally:
        listener.stop()
        listener.join(5)
    assert not listener.is_alive()


def _xids_within(cursor, seconds: float) -> tuple[int, ...]:
    """The XIDs a reader takes once some have come (and the rest of their burst)."""
    seen: tuple[int, ...] = ()
    deadline = time.monotonic() + seconds
    while not seen and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = read_telemetry(fake_nvml, cursor)[0].xids
    time.sleep(0.3)
    return seen + read_telemetry(fake_nvml, cursor)[0].xids


def test_the_stand_in_speaks_the_names_of_the_real_pynvml():
    """Every NVML call and constant the fake answers exists in nvidia-ml-py with the same parameters."""
    names = [n for n in vars(fake_nvml) if n.startswith(("nvml", "NVML")) and n != "NVML_H200"]  # not the fixture
    assert "nvmlEventSetWait_v2" in names and "nvmlDeviceGetRemappedRows" in names
    for name in names:
        real = getattr(pynvml, name)  # AttributeError: the fake made a name up
        fake = getattr(fake_nvml, name)
        if callable(fake) and not isinstance(fake, type):
            assert _required(fake) == _required(real), name
        elif not callable(fake):
            assert fake == real, name
    assert issubclass(fake_nvml.NVMLError_Timeout, fake_nvml.NVMLError)
    assert pynvml.NVMLError_Timeout  # what the listener catches on the real module


def _required(function) -> int:
    return sum(p.default is inspect.Parameter.empty for p in inspect.signature(function).parameters.values())


@pytest.mark.django_db
def test_the_heartbeat_carries_each_gpus_telemetry_to_the_console(settings, gpu_state, monkeypatch):
    from deployments.inventory.models import Gpu, Host
    from workers import agent

    settings.AGENT_NVML_MODULE = "tests.support.fake_nvml"
    settings.AGENT_GPU_METRICS_SOURCE = "nvml"
    monkeypatch.setenv("FAKE_NVML_GPUS", "2")
    gpu_state({"1": {"temperature": 71, "utilization": 88}})
    agent.report_once("telemetry-node")
    host = Host.objects.get(name="telemetry-node")
    first, second = Gpu.objects.filter(host=host).order_by("index")
    assert first.telemetry["temperature"] == 39.0 and first.telemetry["sm_clock_mhz"] == 345.0
    assert (second.telemetry["temperature"], second.telemetry["utilization"]) == (71.0, 88.0)
    assert second.telemetry["uuid"] == second.uuid and second.telemetry_at is not None

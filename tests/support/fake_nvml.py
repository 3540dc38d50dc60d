"""A stand-in for the pynvml module, built on real readings (tests/fixtures/nvml-h200.json).

It answers the calls workers.nvml makes with the values NVML gave on a real H200, including
NVMLError_NotSupported for NVLink on a single-GPU host. FAKE_NVML_GPUS=N repeats the GPU N times
(distinct index, uuid and bus id) to model a multi-GPU host; FAKE_NVML_MISSING=1 behaves like a host
without the NVIDIA driver. nvmlDeviceGetUtilizationRates answers the fixture's reading (an idle H200: 0 %)
unless FAKE_NVML_UTILIZATION says how busy the GPUs are, in percent: "P" for every GPU, "P0,P1,..." per index
(the last repeats). No GPU runs on the development machines, so a busy reading can only be made up.

Telemetry (workers.nvml.read_telemetry): temperature, power, clocks, clocks-event reasons, volatile ECC totals,
retired pages (NotSupported, as on GPUs that remap rows) and remapped rows answer the fixture's idle readings.
FAKE_NVML_STATE names a JSON file, re-read on every call, of per-GPU overrides keyed by index and named like
workers.nvml.GpuTelemetry's fields, e.g. {"0": {"temperature": 92, "throttle_reasons": 64, "ecc_uncorrected": 2,
"retired_pages_pending": true, "remapped_rows_pending": true, "xids": [79]}}; "not_supported": ["temperature"]
makes those fields' calls raise NVMLError_NotSupported. "xids" is a log: each XID in it is delivered once through
the event-set API (nvmlEventSetWait_v2); append to it to raise another. Without one, a wait times out
(NVMLError_Timeout) after its timeout, as NVML's does.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from tests.support.fixtures import NVML_H200

FIXTURE = Path(os.environ.get("FAKE_NVML_FIXTURE", NVML_H200))
NVML_FEATURE_DISABLED = 0
NVML_FEATURE_ENABLED = 1
NVML_NVLINK_MAX_LINKS = 36  # nvidia-ml-py 13 (an H200 has 18 of them)
NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS = 0
NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1
nvmlEventTypeXidCriticalError = 0x0000000000000008  # pynvml's name


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_LibraryNotFound(NVMLError):
    pass


class NVMLError_Timeout(NVMLError):
    pass


def _reading() -> dict:
    return json.loads(FIXTURE.read_text())


def _gpus() -> list[dict]:
    base = _reading()["gpus"][0]
    count = int(os.environ.get("FAKE_NVML_GPUS", len(_reading()["gpus"])))
    gpus = []
    for i in range(count):
        gpu = json.loads(json.dumps(base))
        gpu["index"] = i
        gpu["uuid"] = base["uuid"][:-2] + f"{i:02d}"
        gpu["pci_bus_id"] = f"00000000:00:{6 + i:02X}.0"
        gpus.append(gpu)
    return gpus


def nvmlInit() -> None:  # pynvml names, camelCase and all
    if os.environ.get("FAKE_NVML_MISSING"):
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")


def nvmlShutdown() -> None:
    pass


def nvmlSystemGetDriverVersion() -> str:
    return _reading()["driver"]


def nvmlSystemGetCudaDriverVersion() -> int:
    return _reading()["cuda_driver"]


def nvmlDeviceGetCount() -> int:
    return len(_gpus())


def nvmlDeviceGetHandleByIndex(index: int) -> dict:
    return _gpus()[index]


def nvmlDeviceGetName(handle: dict) -> str:
    return handle["name"]


def nvmlDeviceGetUUID(handle: dict) -> str:
    return handle["uuid"]


def nvmlDeviceGetSerial(handle: dict) -> str:
    return handle["serial"]


def nvmlDeviceGetMemoryInfo(handle: dict) -> SimpleNamespace:
    memory = dict(handle["memory"])
    memory["used"] = _answer(handle, "memory_used", memory["used"])
    memory["free"] = memory["total"] - memory["used"]
    return SimpleNamespace(**memory)


def nvmlDeviceGetPowerManagementLimit(handle: dict) -> int:
    return handle["power_limit_mw"]


def nvmlDeviceGetCudaComputeCapability(handle: dict) -> tuple[int, int]:
    return tuple(handle["compute_capability"])


def nvmlDeviceGetPciInfo(handle: dict) -> SimpleNamespace:
    return SimpleNamespace(busId=handle["pci_bus_id"].encode())


def nvmlDeviceGetNvLinkState(handle: dict, link: int) -> int:
    raise NVMLError_NotSupported("Not Supported")


def nvmlDeviceGetNvLinkRemotePciInfo(handle: dict, link: int):
    raise NVMLError_NotSupported("Not Supported")


def nvmlDeviceGetUtilizationRates(handle: dict) -> SimpleNamespace:
    reading = dict(handle["utilization"])
    if os.environ.get("FAKE_NVML_UTILIZATION"):
        values = [int(v) for v in os.environ["FAKE_NVML_UTILIZATION"].split(",")]
        reading["gpu"] = values[min(handle["index"], len(values) - 1)]
    reading["gpu"] = _answer(handle, "utilization", reading["gpu"])
    return SimpleNamespace(**reading)


# --- telemetry -----------------------------------------------------------------------------------------------


def _state(index: int) -> dict:
    """This GPU's overrides from FAKE_NVML_STATE (re-read on every call, so a test can change them live)."""
    path = os.environ.get("FAKE_NVML_STATE")
    if not path or not Path(path).exists():
        return {}
    return json.loads(Path(path).read_text() or "{}").get(str(index), {})


def _answer(handle: dict, field: str, fixture_value, convert=lambda v: v):
    """The override for `field` if the test set one, else the fixture's value; NotSupported where either says so."""
    state = _state(handle["index"])
    if field in state.get("not_supported", ()):
        raise NVMLError_NotSupported("Not Supported")
    if field in state:
        return convert(state[field])
    if fixture_value == "NVMLError_NotSupported":
        raise NVMLError_NotSupported("Not Supported")
    return fixture_value


def nvmlDeviceGetIndex(handle: dict) -> int:
    return handle["index"]


def nvmlDeviceGetTemperature(handle: dict, sensor: int) -> int:
    return _answer(handle, "temperature", handle["temperature_c"])


def nvmlDeviceGetPowerUsage(handle: dict) -> int:
    return _answer(handle, "power_w", handle["power_usage_mw"], lambda watts: int(watts * 1000))


def nvmlDeviceGetEnforcedPowerLimit(handle: dict) -> int:
    return _answer(handle, "power_limit_w", handle["enforced_power_limit_mw"], lambda watts: int(watts * 1000))


def nvmlDeviceGetClockInfo(handle: dict, clock_type: int) -> int:
    if clock_type == NVML_CLOCK_SM:
        return _answer(handle, "sm_clock_mhz", handle["clocks_mhz"]["sm"])
    if clock_type == NVML_CLOCK_MEM:
        return _answer(handle, "memory_clock_mhz", handle["clocks_mhz"]["mem"])
    raise NVMLError_NotSupported("Not Supported")


def nvmlDeviceGetCurrentClocksEventReasons(handle: dict) -> int:
    return _answer(handle, "throttle_reasons", handle["clocks_event_reasons"])


nvmlDeviceGetCurrentClocksThrottleReasons = nvmlDeviceGetCurrentClocksEventReasons  # the name before driver 535


def nvmlDeviceGetTotalEccErrors(handle: dict, error_type: int, counter_type: int) -> int:
    kind = "corrected" if error_type == NVML_MEMORY_ERROR_TYPE_CORRECTED else "uncorrected"
    return _answer(handle, f"ecc_{kind}", handle["ecc_volatile"][kind])


def nvmlDeviceGetRetiredPages(handle: dict, cause: int) -> list[int]:
    field = (
        "retired_pages_single"
        if cause == NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS
        else ("retired_pages_double")
    )
    # NVML answers the retired pages' addresses; the readings only count them.
    return _answer(handle, field, handle["retired_pages"], lambda n: [0x1000 * (i + 1) for i in range(n)])


def nvmlDeviceGetRetiredPagesPendingStatus(handle: dict) -> int:
    return _answer(handle, "retired_pages_pending", handle["retired_pages_pending"], int)


def nvmlDeviceGetRemappedRows(handle: dict) -> tuple[int, int, int, int]:
    rows = list(handle["remapped_rows"])  # (correctable, uncorrectable, pending, failure occurred)
    state = _state(handle["index"])
    if "remapped_rows" in state.get("not_supported", ()):
        raise NVMLError_NotSupported("Not Supported")
    fields = (
        "remapped_rows_correctable",
        "remapped_rows_uncorrectable",
        "remapped_rows_pending",
        "remapped_rows_failed",
    )
    return tuple(int(state.get(field, rows[i])) for i, field in enumerate(fields))


# XIDs delivered so far per GPU index: each XID in a GPU's "xids" log is delivered once (to the first waiter).
_delivered: dict[int, int] = {}
_delivered_lock = threading.Lock()


def nvmlEventSetCreate() -> dict:
    return {"gpus": set()}


def nvmlDeviceRegisterEvents(handle: dict, event_types: int, event_set: dict) -> None:
    if event_types & nvmlEventTypeXidCriticalError:
        event_set["gpus"].add(handle["index"])


def nvmlEventSetFree(event_set: dict) -> None:
    event_set["gpus"].clear()


def _next_xid(event_set: dict):
    with _delivered_lock:
        for index in sorted(event_set["gpus"]):
            xids = _state(index).get("xids", [])
            done = _delivered.get(index, 0)
            if done < len(xids):
                _delivered[index] = done + 1
                return index, int(xids[done])
    return None


def nvmlEventSetWait_v2(event_set: dict, timeout_ms: int) -> SimpleNamespace:
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        event = _next_xid(event_set)
        if event is not None:
            index, xid = event
            return SimpleNamespace(
                device=nvmlDeviceGetHandleByIndex(index),
                eventType=nvmlEventTypeXidCriticalError,
                eventData=xid,
                gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF,
            )
        if time.monotonic() >= deadline:
            raise NVMLError_Timeout("Timeout")
        time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))


nvmlEventSetWait = nvmlEventSetWait_v2

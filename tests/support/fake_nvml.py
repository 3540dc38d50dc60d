"""A stand-in for the pynvml module, built on real readings (tests/fixtures/nvml-h200.json).

It answers the calls workers.nvml makes with the values NVML gave on a real H200, including
NVMLError_NotSupported for NVLink on a single-GPU host. FAKE_NVML_GPUS=N repeats the GPU N times
(distinct index, uuid and bus id) to model a multi-GPU host; FAKE_NVML_MISSING=1 behaves like a host
without the NVIDIA driver. nvmlDeviceGetUtilizationRates answers the fixture's reading (an idle H200: 0 %)
unless FAKE_NVML_UTILIZATION says how busy the GPUs are, in percent: "P" for every GPU, "P0,P1,..." per index
(the last repeats). No GPU runs on the development machines, so a busy reading can only be made up.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

from tests.support.fixtures import NVML_H200

FIXTURE = Path(os.environ.get("FAKE_NVML_FIXTURE", NVML_H200))
NVML_FEATURE_ENABLED = 1
NVML_NVLINK_MAX_LINKS = 18


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_LibraryNotFound(NVMLError):
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
    return SimpleNamespace(**handle["memory"])


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
    return SimpleNamespace(**reading)

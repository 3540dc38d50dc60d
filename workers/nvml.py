"""Reading a host's GPUs through NVML (nvidia-ml-py). No Django: the agent and tests call it.

`discover(nvml)` takes the NVML module (pynvml, or a stand-in built on real readings in tests) and
never raises for a missing driver or GPU: the result then has no GPUs and a note saying why.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from deployments.inventory import notes


@dataclass(frozen=True)
class DiscoveredGpu:
    index: int
    uuid: str
    name: str
    memory_total: int
    memory_free: int
    power_limit_w: float | None
    compute_capability: str
    serial: str
    nvlink_group: str
    health: str = "ok"


@dataclass
class Discovery:
    driver_version: str = ""
    cuda_version: str = ""
    gpus: list[DiscoveredGpu] = field(default_factory=list)
    note: str = ""


def load_nvml(module_name: str = "pynvml"):
    """The NVML module to read from (a dotted path, so tests can name a stand-in)."""
    return importlib.import_module(module_name)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(raw: int) -> str:
    # NVML encodes CUDA 13.0 as 13000.
    return f"{raw // 1000}.{(raw % 1000) // 10}"


def _optional(call, *args, default=None):
    try:
        return call(*args)
    except Exception:  # NotSupported and friends: the field stays unknown
        return default


def _nvlink_peers(nvml, handle) -> list[str]:
    """PCI bus ids of the GPUs this one reaches over active NVLink links."""
    peers = []
    for link in range(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18)):
        try:
            if nvml.nvmlDeviceGetNvLinkState(handle, link) != getattr(nvml, "NVML_FEATURE_ENABLED", 1):
                continue
            peers.append(_text(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId))
        except Exception:  # NotSupported (no NVLink on this GPU) or no such link: stop looking
            break
    return peers


def discover(nvml) -> Discovery:
    """Read driver, CUDA and every GPU. Without NVML or a GPU: an empty discovery with the reason."""
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return Discovery(note=notes.nvml_unavailable(str(exc)))
    try:
        result = Discovery(
            driver_version=_text(_optional(nvml.nvmlSystemGetDriverVersion, default="")),
            cuda_version=_cuda_version(_optional(nvml.nvmlSystemGetCudaDriverVersion, default=0) or 0),
        )
        count = nvml.nvmlDeviceGetCount()
        bus_ids, peers = {}, {}
        for index in range(count):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            capability = _optional(nvml.nvmlDeviceGetCudaComputeCapability, handle)
            power_mw = _optional(nvml.nvmlDeviceGetPowerManagementLimit, handle)
            pci = _optional(nvml.nvmlDeviceGetPciInfo, handle)
            bus_ids[index] = _text(pci.busId) if pci is not None else str(index)
            peers[index] = _nvlink_peers(nvml, handle)
            result.gpus.append(
                DiscoveredGpu(
                    index=index,
                    uuid=_text(_optional(nvml.nvmlDeviceGetUUID, handle, default="")),
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    memory_total=int(memory.total),
                    memory_free=int(memory.free),
                    power_limit_w=power_mw / 1000 if power_mw else None,
                    compute_capability=".".join(map(str, capability)) if capability else "",
                    serial=_text(_optional(nvml.nvmlDeviceGetSerial, handle, default="")),
                    nvlink_group="",
                )
            )
        if not count:
            result.note = notes.NO_GPU_FOUND
        result.gpus = _with_nvlink_groups(result.gpus, bus_ids, peers)
        return result
    finally:
        _optional(nvml.nvmlShutdown)


def _with_nvlink_groups(gpus: list[DiscoveredGpu], bus_ids: dict, peers: dict) -> list[DiscoveredGpu]:
    """Name each set of GPUs joined by NVLink after its lowest index; GPUs without links get no group."""
    by_bus = {bus: index for index, bus in bus_ids.items()}
    parent = {gpu.index: gpu.index for gpu in gpus}

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for index, remote in peers.items():
        for bus in remote:
            if bus in by_bus:
                parent[root(by_bus[bus])] = root(index)
    linked = {index for index, remote in peers.items() if any(bus in by_bus for bus in remote)}
    groups = {}
    for gpu in gpus:
        if gpu.index in linked:
            groups[gpu.index] = f"nvlink-{min(i for i in linked if root(i) == root(gpu.index))}"
    return [DiscoveredGpu(**{**gpu.__dict__, "nvlink_group": groups.get(gpu.index, "")}) for gpu in gpus]

"""Reading a host's GPUs through NVML (nvidia-ml-py). No Django: the agent and tests call it.

`discover(nvml)` takes the NVML module (pynvml, or a stand-in built on real readings in tests) and
never raises for a missing driver or GPU: the result then has no GPUs and a note saying why.
"""

from __future__ import annotations

import importlib
import logging
import threading
from dataclasses import dataclass, field

from deployments.inventory import notes

logger = logging.getLogger(__name__)


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


# --- telemetry: what each GPU is doing now (the heartbeat and the agent's exporter read it) ---------------------

# NVML's clocks-event-reasons bits the health rules and the thermal-throttle series use.
THROTTLE_HW_SLOWDOWN = 0x8
THROTTLE_SW_THERMAL = 0x20
THROTTLE_HW_THERMAL = 0x40
THROTTLE_HW_POWER_BRAKE = 0x80
THROTTLE_THERMAL = THROTTLE_SW_THERMAL | THROTTLE_HW_THERMAL


@dataclass(frozen=True)
class GpuTelemetry:
    index: int
    uuid: str
    utilization: float | None = None  # percent 0..100
    memory_used: int | None = None  # bytes
    memory_total: int | None = None
    temperature: float | None = None  # Celsius
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: float | None = None
    memory_clock_mhz: float | None = None
    throttle_reasons: int = 0  # NVML clocks-event-reasons bitmask
    ecc_corrected: int | None = None  # volatile totals since driver load
    ecc_uncorrected: int | None = None
    retired_pages_single: int | None = None
    retired_pages_double: int | None = None
    retired_pages_pending: bool = False
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remapped_rows_pending: bool = False
    remapped_rows_failed: bool = False
    xids: tuple[int, ...] = ()  # XID error codes seen since the previous reading (events)


class XidCursor:
    """One reader's place in an XidListener's log: each take() returns the XIDs that came since the last one."""

    def __init__(self, listener: XidListener, position: int) -> None:
        self.listener, self.position = listener, position

    def take(self) -> dict[int, tuple[int, ...]]:
        events, self.position = self.listener.since(self.position)
        seen: dict[int, list[int]] = {}
        for index, xid in events:
            seen.setdefault(index, []).append(xid)
        return {index: tuple(xids) for index, xids in seen.items()}


class XidListener(threading.Thread):
    """Waits on NVML's event set for XID critical errors of every GPU and keeps them in a log.

    XIDs are events, not readings: a poll every heartbeat would miss them, so a thread waits for them. Readers
    (the heartbeat, the exporter) each hold a cursor(), so one does not take the other's XIDs. Without NVML, or
    where a GPU cannot register for events, the thread ends or skips that GPU: no XIDs is then all it reports.
    """

    def __init__(self, nvml, wait_ms: int = 500) -> None:
        super().__init__(name="nvml-xid-listener", daemon=True)
        self.nvml, self.wait_ms = nvml, wait_ms
        self.stopped, self.ready = threading.Event(), threading.Event()
        self._log: list[tuple[int, int]] = []
        self._lock = threading.Lock()

    def cursor(self) -> XidCursor:
        """A reader that sees the XIDs from now on."""
        with self._lock:
            return XidCursor(self, len(self._log))

    def since(self, position: int) -> tuple[list[tuple[int, int]], int]:
        with self._lock:
            return self._log[position:], len(self._log)

    def stop(self) -> None:
        self.stopped.set()

    def run(self) -> None:
        nvml = self.nvml
        try:
            nvml.nvmlInit()
        except Exception:  # no driver: discover() says so already
            self.ready.set()
            return
        event_set = None
        try:
            event_set = nvml.nvmlEventSetCreate()
            xid_event = getattr(nvml, "nvmlEventTypeXidCriticalError", 0x8)
            for index in range(nvml.nvmlDeviceGetCount()):
                try:
                    nvml.nvmlDeviceRegisterEvents(nvml.nvmlDeviceGetHandleByIndex(index), xid_event, event_set)
                except Exception:  # NotSupported on this GPU (some virtual GPUs): its XIDs go unseen
                    logger.info("GPU %d cannot report XID events through NVML", index)
            self.ready.set()
            self._wait(event_set, xid_event)
        except Exception:
            logger.exception("the NVML XID listener stopped")
        finally:
            self.ready.set()
            if event_set is not None:
                _optional(nvml.nvmlEventSetFree, event_set)
            _optional(nvml.nvmlShutdown)

    def _wait(self, event_set, xid_event: int) -> None:
        nvml = self.nvml
        timeout = getattr(nvml, "NVMLError_Timeout", ())
        while not self.stopped.is_set():
            try:
                data = nvml.nvmlEventSetWait_v2(event_set, self.wait_ms)
            except Exception as exc:
                if not isinstance(exc, timeout):  # anything but "nothing happened": do not spin on it
                    logger.debug("NVML event wait failed: %s", exc)
                    self.stopped.wait(self.wait_ms / 1000)
                continue
            if not data.eventType & xid_event:
                continue
            index = _optional(nvml.nvmlDeviceGetIndex, data.device, default=-1)
            with self._lock:
                self._log.append((int(index), int(data.eventData)))


def read_telemetry(nvml, xid_source: XidCursor | None = None) -> list[GpuTelemetry]:
    """Each GPU's reading now; a field NVML cannot answer (NotSupported, no permission) stays None.

    Never raises: without NVML the list is empty. `xid_source` (an XidListener cursor) fills `xids` with what
    came since its previous take.
    """
    try:
        nvml.nvmlInit()
    except Exception:
        return []
    readings = []
    try:
        xids = xid_source.take() if xid_source is not None else {}
        for index in range(_optional(nvml.nvmlDeviceGetCount, default=0)):
            handle = _optional(nvml.nvmlDeviceGetHandleByIndex, index)
            if handle is not None:
                readings.append(_read_gpu(nvml, index, handle, xids.get(index, ())))
    except Exception:  # a reading is telemetry: a failure loses this one, never the heartbeat
        logger.exception("reading GPU telemetry failed")
    finally:
        _optional(nvml.nvmlShutdown)
    return readings


def _read_gpu(nvml, index: int, handle, xids: tuple[int, ...]) -> GpuTelemetry:
    def const(name: str, default: int) -> int:  # an older pynvml lacks a few of the names
        return getattr(nvml, name, default)

    def ecc(kind: str) -> int | None:
        kind_value = const(f"NVML_MEMORY_ERROR_TYPE_{kind}", {"CORRECTED": 0, "UNCORRECTED": 1}[kind])
        return _count(_optional(nvml.nvmlDeviceGetTotalEccErrors, handle, kind_value, const("NVML_VOLATILE_ECC", 0)))

    def retired(cause: str, default: int) -> int | None:
        pages = _optional(nvml.nvmlDeviceGetRetiredPages, handle, const(f"NVML_PAGE_RETIREMENT_CAUSE_{cause}", default))
        return len(pages) if pages is not None else None

    utilization = _optional(nvml.nvmlDeviceGetUtilizationRates, handle)
    memory = _optional(nvml.nvmlDeviceGetMemoryInfo, handle)
    power_mw = _optional(nvml.nvmlDeviceGetPowerUsage, handle)
    limit_mw = _optional(nvml.nvmlDeviceGetEnforcedPowerLimit, handle) or _optional(
        nvml.nvmlDeviceGetPowerManagementLimit, handle
    )
    # "Throttle reasons" were renamed "clocks event reasons" (driver 535); the bits are the same.
    reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
        nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
    )
    pending = _optional(nvml.nvmlDeviceGetRetiredPagesPendingStatus, handle)
    remapped = _optional(nvml.nvmlDeviceGetRemappedRows, handle)  # (correctable, uncorrectable, pending, failed)
    return GpuTelemetry(
        index=index,
        uuid=_text(_optional(nvml.nvmlDeviceGetUUID, handle, default="")),
        utilization=_number(getattr(utilization, "gpu", None)),
        memory_used=int(memory.used) if memory is not None else None,
        memory_total=int(memory.total) if memory is not None else None,
        temperature=_number(_optional(nvml.nvmlDeviceGetTemperature, handle, const("NVML_TEMPERATURE_GPU", 0))),
        power_w=power_mw / 1000 if power_mw is not None else None,
        power_limit_w=limit_mw / 1000 if limit_mw else None,
        sm_clock_mhz=_number(_optional(nvml.nvmlDeviceGetClockInfo, handle, const("NVML_CLOCK_SM", 1))),
        memory_clock_mhz=_number(_optional(nvml.nvmlDeviceGetClockInfo, handle, const("NVML_CLOCK_MEM", 2))),
        throttle_reasons=int(_optional(reasons, handle, default=0) or 0) if reasons else 0,
        ecc_corrected=ecc("CORRECTED"),
        ecc_uncorrected=ecc("UNCORRECTED"),
        retired_pages_single=retired("MULTIPLE_SINGLE_BIT_ECC_ERRORS", 0),
        retired_pages_double=retired("DOUBLE_BIT_ECC_ERROR", 1),
        retired_pages_pending=pending is not None and pending == const("NVML_FEATURE_ENABLED", 1),
        remapped_rows_correctable=int(remapped[0]) if remapped is not None else None,
        remapped_rows_uncorrectable=int(remapped[1]) if remapped is not None else None,
        remapped_rows_pending=bool(remapped[2]) if remapped is not None else False,
        remapped_rows_failed=bool(remapped[3]) if remapped is not None else False,
        xids=tuple(xids),
    )


def _number(value) -> float | None:
    return float(value) if value is not None else None


def _count(value) -> int | None:
    return int(value) if value is not None else None

"""The GPUs' own view of a benchmark step: how busy the server's GPUs were, read through NVML by the load
generator's sampling thread (loadgen_metrics.ServerMetrics) at every tick, beside the servers' /metrics.

The generator runs on the deployment's host (its agent starts it with the control plane's python, which has
nvidia-ml-py, the module workers/nvml.py reads the inventory with), so it reads the very GPUs the server holds.
`nvmlDeviceGetUtilizationRates(handle).gpu` is the percent of the driver's last sample period (1/6 s to 1 s by
product) in which a kernel ran on the GPU: a sample every PERIOD_S covers the step without gaps worth noting.

Figures (0..1, over the samples inside the step's measurement window, the whole step when none fell inside):
- gpu_utilization_max: the busiest GPU of the server's at its busiest moment (what suggestions.shard_onto_peer
  compares with GPU_SATURATED: one saturated GPU while a peer is free);
- gpu_utilization_mean: the busiest GPU's mean over the samples (with tensor parallelism the shards are busy
  alike; a mean over all of them would hide one GPU doing all the work).

No NVML (no driver, the module missing, a CPU deployment given GPU indexes) or a GPU index NVML does not know
never fails the step: no figures, and `gpu_metrics_error` says why.
"""

from __future__ import annotations

import contextlib
import importlib
import time
from typing import Any


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]


class GpuUtilization:
    """NVML utilization of some GPUs: open() once, read() at each tick, close(), then figures() of a window."""

    def __init__(self, indexes: list[int] | tuple[int, ...], module_name: str = "pynvml") -> None:
        self.indexes = list(indexes)
        self.module_name = module_name
        self.nvml: Any = None
        self.handles: list[Any] = []
        self.samples: list[tuple[int, list[float]]] = []  # (perf_counter_ns, percent per GPU)
        self.reads = 0
        self.failures = 0
        self.error = ""

    def open(self) -> bool:
        """Load NVML and a handle per GPU; False (and the reason in `error`) when it cannot."""
        try:
            nvml = importlib.import_module(self.module_name)
            nvml.nvmlInit()
        # pynvml raises its own NVMLError family (library not found, driver not loaded, ...); a missing module is
        # an ImportError: each means "no figures", never a failed step.
        except Exception as exc:
            self.error = f"NVML is not available: {_reason(exc)}"
            return False
        try:
            self.handles = [nvml.nvmlDeviceGetHandleByIndex(index) for index in self.indexes]
        except Exception as exc:
            self.error = f"NVML cannot read GPU(s) {', '.join(map(str, self.indexes))}: {_reason(exc)}"
            _quietly(nvml.nvmlShutdown)
            return False
        self.nvml = nvml
        return True

    def read(self) -> None:
        if self.nvml is None:
            return
        self.reads += 1
        try:
            values = [float(self.nvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in self.handles]
        except Exception as exc:
            self.failures += 1
            self.error = f"NVML utilization: {_reason(exc)}"
            return
        self.samples.append((time.perf_counter_ns(), [min(max(v, 0.0), 100.0) for v in values]))

    def close(self) -> None:
        if self.nvml is not None:
            _quietly(self.nvml.nvmlShutdown)
            self.nvml = None

    def figures(self, window_start_ns: int = 0, window_end_ns: int | None = None) -> dict[str, Any]:
        inside = [v for t, v in self.samples if t >= window_start_ns and (window_end_ns is None or t <= window_end_ns)]
        samples = inside or [v for _, v in self.samples]
        out: dict[str, Any] = {"gpu_indexes": self.indexes}
        if samples:
            busiest = [max(values) for values in samples]
            out["gpu_utilization_max"] = round(max(busiest) / 100, 4)
            out["gpu_utilization_mean"] = round(sum(busiest) / len(busiest) / 100, 4)
            out["gpu_utilization_samples"] = len(samples)
        if self.error and (not samples or self.failures):
            failed = f" ({self.failures} of {self.reads} reads failed)" if self.failures else ""
            out["gpu_metrics_error"] = (self.error + failed)[:500]
        return out


def _quietly(call) -> None:
    with contextlib.suppress(Exception):  # shutting NVML down: nothing left to report
        call()

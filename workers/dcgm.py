"""GPU readings from an NVIDIA DCGM exporter (AGENT_GPU_METRICS_SOURCE=dcgm) instead of the agent's own NVML calls.

Where dcgm-exporter already runs on a host, Prometheus scrapes it, and the agent reads the same text from it for the
console's heartbeat. DCGM field -> GpuTelemetry field; a field the exporter does not export stays None (or False).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import urllib.request
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from workers.nvml import GpuTelemetry

logger = logging.getLogger(__name__)
MIB = 1024 * 1024

# DCGM field (as dcgm-exporter names the series) -> (GpuTelemetry field, conversion)
FIELDS = {
    "DCGM_FI_DEV_GPU_UTIL": ("utilization", float),
    "DCGM_FI_DEV_FB_USED": ("memory_used", lambda v: int(v * MIB)),
    "DCGM_FI_DEV_GPU_TEMP": ("temperature", float),
    "DCGM_FI_DEV_POWER_USAGE": ("power_w", float),
    "DCGM_FI_DEV_POWER_MGMT_LIMIT": ("power_limit_w", float),
    "DCGM_FI_DEV_ENFORCED_POWER_LIMIT": ("power_limit_w", float),
    "DCGM_FI_DEV_SM_CLOCK": ("sm_clock_mhz", float),
    "DCGM_FI_DEV_MEM_CLOCK": ("memory_clock_mhz", float),
    "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS": ("throttle_reasons", int),
    "DCGM_FI_DEV_CLOCKS_EVENT_REASONS": ("throttle_reasons", int),
    "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL": ("ecc_corrected", int),
    "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL": ("ecc_uncorrected", int),
    "DCGM_FI_DEV_RETIRED_SBE": ("retired_pages_single", int),
    "DCGM_FI_DEV_RETIRED_DBE": ("retired_pages_double", int),
    "DCGM_FI_DEV_RETIRED_PENDING": ("retired_pages_pending", bool),
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS": ("remapped_rows_correctable", int),
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS": ("remapped_rows_uncorrectable", int),
    "DCGM_FI_DEV_ROW_REMAP_PENDING": ("remapped_rows_pending", bool),
    "DCGM_FI_DEV_ROW_REMAP_FAILURE": ("remapped_rows_failed", bool),
}
# Framebuffer memory: total = used + free + reserved (MiB), unless the exporter sends FB_TOTAL.
MEMORY = ("DCGM_FI_DEV_FB_TOTAL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_FB_RESERVED")
XID = "DCGM_FI_DEV_XID_ERRORS"  # the value of the last XID the GPU reported (0: none)


def parse_dcgm(text: str) -> tuple[list[GpuTelemetry], dict[int, int]]:
    """The readings in a dcgm-exporter text, and each GPU's last XID (0 for none).

    The readings are per GPU: a MIG instance's series (a GPU_I_ID label) fills a field only where the GPU has no
    series of its own.
    """
    wanted = {*FIELDS, *MEMORY, XID}
    device: dict[int, dict[str, float]] = {}
    instance: dict[int, dict[str, float]] = {}
    uuids: dict[int, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # The parser names a counter's samples <name>_total whether the text did or not.
            name = family.name if family.type == "counter" and sample.name == f"{family.name}_total" else sample.name
            gpu = sample.labels.get("gpu", "")
            if name not in wanted or not gpu.isdigit():
                continue
            index = int(gpu)
            uuids.setdefault(index, sample.labels.get("UUID", ""))
            values = instance if sample.labels.get("GPU_I_ID") else device
            values.setdefault(index, {}).setdefault(name, sample.value)
    readings, last_xid = [], {}
    for index in sorted(uuids):
        values = {**instance.get(index, {}), **device.get(index, {})}
        fields = {}
        for name, (field, convert) in FIELDS.items():
            if name in values:
                fields[field] = convert(values[name])
        total = values.get("DCGM_FI_DEV_FB_TOTAL")
        if total is None and "DCGM_FI_DEV_FB_USED" in values and "DCGM_FI_DEV_FB_FREE" in values:
            total = sum(values.get(name, 0) for name in MEMORY[1:])
        if total is not None:
            fields["memory_total"] = int(total * MIB)
        readings.append(GpuTelemetry(index=index, uuid=uuids[index], **fields))
        last_xid[index] = int(values.get(XID, 0))
    return readings, last_xid


class DcgmReader:
    """Reads a DCGM exporter's text; `read()` gives readings whose `xids` hold an XID new since the last read.

    DCGM exports only the last XID's value, so a new XID is one whose value differs from the previous reading's
    (the same XID twice in a row is seen once). The first reading after the agent starts reports a standing XID:
    it may be old, but a GPU that still shows one is worth a look.
    """

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url, self.timeout = url, timeout
        self._last_xid: dict[int, int] = {}

    def fetch(self) -> str:
        with urllib.request.urlopen(self.url, timeout=self.timeout) as response:  # noqa: S310 - an operator's URL
            return response.read().decode()

    def read(self) -> list[GpuTelemetry]:
        """Never raises: an exporter that does not answer gives no readings (logged)."""
        try:
            readings, last_xid = parse_dcgm(self.fetch())
        except Exception as exc:
            logger.warning("the DCGM exporter at %s did not answer: %s", self.url, exc)
            return []
        result = []
        for t in readings:
            xid = last_xid.get(t.index, 0)
            new = (xid,) if xid and self._last_xid.get(t.index) != xid else ()
            self._last_xid[t.index] = xid
            result.append(dataclasses.replace(t, xids=new))
        return result


def exporter_address(url: str) -> str:
    """The DCGM exporter's "host:port" as Prometheus elsewhere reaches it (a loopback host becomes this host)."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    if host in ("localhost", "127.0.0.1", "::1", "0.0.0.0", "::"):  # noqa: S104 - a comparison, not a bind
        host = socket.getfqdn()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

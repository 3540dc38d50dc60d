"""GPU health rules: one telemetry reading (workers.nvml.GpuTelemetry as a dict) and what the GPU's health was and
remembered turn into healthy, degraded or failed, with a cause, a detail and a next step. Pure: no database.

Failed (placement never uses the GPU; deployments on it are flagged):
- an XID that NVIDIA's catalogue resolves by resetting the GPU or servicing it: 48 double-bit ECC, 64 page retirement
  or row remapping failed, 74 NVLink error, 79 fallen off the bus, 95 uncontained ECC error, 119/120 GSP (firmware)
  timeout or error;
- the volatile uncorrectable ECC count rose since the previous reading;
- row remapping failed (`remapped_rows_failed`).
Degraded (placement uses the GPU only when nothing healthy fits):
- retired pages or remapped rows pending: they take effect at the next GPU reset, degraded until then;
- XIDs 63 (row remapping / page retirement recorded, reset to activate), 92 (high single-bit ECC rate) and 94
  (contained ECC error: the program using the memory was stopped), held for XID_DEGRADED_HOLD_SECONDS;
- thermal slowdown (HW_THERMAL, SW_THERMAL, HW_SLOWDOWN or HW_POWER_BRAKE clock-event bits) set in every reading for
  GPU_THERMAL_THROTTLE_SECONDS; a short spike is not a fault.
Application XIDs (13 graphics engine exception, 31 memory page fault, 43 channel stopped, 45 preemptive cleanup) are
the program's fault in NVIDIA's catalogue (resolution RESTART_APP) and change nothing; unknown XIDs neither.

XID classes from NVIDIA's Xid catalogue, "Resolution Bucket (Immediate Action)" column
(https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html) and the dynamic page retirement guide
(https://docs.nvidia.com/deploy/dynamic-page-retirement/visibility.html: 48 DBE, 63 page retired, 64 retirement failed).

Failed is sticky. It ends when an admin sets the GPU's health by hand (the GPU edit form), or when the agent reports a
clean reading after a reset: the volatile uncorrectable ECC count is below the one the GPU had when it failed (NVML
zeroes volatile counts when the driver reloads or the GPU is reset). A failure without a count to compare (e.g. XID 79
on a GPU that never counted an ECC error) needs the admin: a GPU that fell off the bus deserves a person's look.
A health set by hand (no cause) is kept until the rules find something worse.

What the rules remember between readings lives in the GPU's telemetry under MEMORY_KEY: since when the thermal bits
are set, until when an XID holds the GPU degraded, the ECC count at failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.utils.translation import gettext_lazy as _

OK, DEGRADED, FAILED = "ok", "degraded", "failed"
MEMORY_KEY = "health_memory"
XID_DEGRADED_HOLD_SECONDS = 3600

# NVML clocks-event-reasons bits that mean the GPU slows itself for heat (or an external brake).
HW_SLOWDOWN, SW_THERMAL, HW_THERMAL, HW_POWER_BRAKE = 0x8, 0x20, 0x40, 0x80
THERMAL_BITS = HW_SLOWDOWN | SW_THERMAL | HW_THERMAL | HW_POWER_BRAKE

RESET = _("Drain the GPU, then reset it (nvidia-smi -r) or reboot the host; if it happens again, have it serviced.")
SERVICE = _("Drain the GPU and have the hardware checked (NVIDIA's field diagnostic); replace it if it fails again.")

# XID -> (detail, next step). Details are constant sentences (stored in English, shown in the reader's language).
FAILED_XIDS: dict[int, tuple] = {
    48: (_("XID 48: an uncorrectable double-bit ECC error in the GPU's memory."), RESET),
    64: (_("XID 64: the GPU could not retire a memory page or remap a row."), SERVICE),
    74: (_("XID 74: an NVLink error; the links between GPUs are not reliable."), RESET),
    79: (_("XID 79: the GPU has fallen off the bus and no longer answers."), RESET),
    95: (_("XID 95: an uncontained ECC error; data in the GPU's memory may be corrupt."), RESET),
    119: (_("XID 119: the GPU's firmware (GSP) stopped answering."), RESET),
    120: (_("XID 120: the GPU's firmware (GSP) reported an error."), RESET),
}
DEGRADED_XIDS: dict[int, tuple] = {
    63: (
        _("XID 63: a memory row was marked for remapping; it takes effect at the next reset."),
        _("Reset the GPU when it is idle (nvidia-smi -r) to activate the remapping."),
    ),
    92: (
        _("XID 92: a high rate of corrected single-bit ECC errors, a sign of failing memory."),
        _("Watch the GPU's ECC counts; plan to drain and service it if the rate keeps rising."),
    ),
    94: (
        _("XID 94: a contained ECC error; the program using that memory was stopped."),
        _("Restart what ran on the GPU, and reset the GPU when it is idle to remap the row."),
    ),
}
APPLICATION_XIDS = frozenset({13, 31, 43, 45})

TEXTS: dict[str, tuple] = {
    "ecc-uncorrectable": (
        _("The GPU's uncorrectable ECC error count rose: its memory returned data it could not correct."),
        RESET,
    ),
    "remap-failed": (_("Row remapping failed: the GPU has no spare memory rows left."), SERVICE),
    "retired-pages-pending": (
        _("Retired memory pages are pending: they take effect at the next GPU reset."),
        _("Reset the GPU when it is idle (nvidia-smi -r) to retire the pages."),
    ),
    "remap-pending": (
        _("Remapped memory rows are pending: they take effect at the next GPU reset."),
        _("Reset the GPU when it is idle (nvidia-smi -r) to activate the remapping."),
    ),
    "thermal-throttle": (
        _("The GPU has been slowing its clocks for heat for longer than the allowed time."),
        _("Check the host's cooling (fans, airflow, inlet temperature) and the GPU's power limit."),
    ),
    **{f"xid-{xid}": texts for xid, texts in {**FAILED_XIDS, **DEGRADED_XIDS}.items()},
}


@dataclass(frozen=True)
class Assessment:
    """What the rules make of a reading: health, why (cause, a TEXTS key; "" for healthy or set by hand), and what
    to remember for the next reading."""

    health: str
    cause: str = ""
    memory: dict = field(default_factory=dict)

    @property
    def detail(self):
        return texts(self.cause)[0]

    @property
    def next_step(self):
        return texts(self.cause)[1]


def texts(cause: str) -> tuple:
    """(detail, next step) of a cause, translated lazily; empty for none or an unknown one."""
    return TEXTS.get(cause, ("", ""))


def _parse(value) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _failure(reading: dict, previous: dict) -> str:
    for xid in reading.get("xids") or ():
        if xid in FAILED_XIDS:
            return f"xid-{xid}"
    if reading.get("remapped_rows_failed"):
        return "remap-failed"
    now_ecc, before_ecc = reading.get("ecc_uncorrected"), previous.get("ecc_uncorrected")
    if now_ecc is not None and before_ecc is not None and now_ecc > before_ecc:
        return "ecc-uncorrectable"
    return ""


def assess(
    reading: dict,
    *,
    previous: dict | None,
    health: str,
    cause: str,
    now: datetime,
    thermal_seconds: int,
) -> Assessment:
    """The GPU's health after this reading. `previous` is the GPU's stored telemetry (the last reading with the
    rules' memory under MEMORY_KEY), `health` and `cause` its current health."""
    previous = previous or {}
    memory = dict(previous.get(MEMORY_KEY) or {})

    # Thermal: remember since when the bits have been set in every reading (a clear reading forgets).
    if int(reading.get("throttle_reasons") or 0) & THERMAL_BITS:
        memory.setdefault("thermal_since", now.isoformat())
    else:
        memory.pop("thermal_since", None)

    failure = _failure(reading, previous)
    if failure:
        memory["failed_ecc_uncorrected"] = reading.get("ecc_uncorrected")
        return Assessment(FAILED, failure, memory)
    if health == FAILED:
        at_failure, ecc = memory.get("failed_ecc_uncorrected"), reading.get("ecc_uncorrected")
        reset = at_failure is not None and ecc is not None and ecc < at_failure and cause != ""
        if not reset:
            return Assessment(FAILED, cause, memory)
        memory.pop("failed_ecc_uncorrected", None)

    hold_until = _parse(memory.get("xid_hold_until"))
    for xid in reading.get("xids") or ():
        if xid in DEGRADED_XIDS:
            memory["xid_hold"], memory["xid_hold_until"] = (
                f"xid-{xid}",
                (now + timedelta(seconds=XID_DEGRADED_HOLD_SECONDS)).isoformat(),
            )
            hold_until = _parse(memory["xid_hold_until"])
    if hold_until is not None and hold_until <= now:
        memory.pop("xid_hold", None), memory.pop("xid_hold_until", None)

    degraded = ""
    if reading.get("remapped_rows_pending"):
        degraded = "remap-pending"
    elif reading.get("retired_pages_pending"):
        degraded = "retired-pages-pending"
    elif memory.get("xid_hold"):
        degraded = memory["xid_hold"]
    elif (since := _parse(memory.get("thermal_since"))) and (now - since).total_seconds() >= thermal_seconds:
        degraded = "thermal-throttle"
    if degraded:
        return Assessment(DEGRADED, degraded, memory)
    if health in (DEGRADED, FAILED) and cause == "":  # set by hand: kept until the rules find worse
        return Assessment(health, "", memory)
    return Assessment(OK, "", memory)

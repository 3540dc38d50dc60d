"""Placement: which host and GPUs take a workload. Pure: plain data in, a decision (or a reason) out.

The one placement engine: every launch (through the planner, deployments.sizing) and every job that needs a
GPU asks it. Rules, in order: all shards on one host; only online GPUs that have not failed (nor gone missing),
with enough unreserved memory
(less the share of each GPU the server leaves untouched, `keep_free_fraction`; or, for a server that takes a
fixed share of each GPU at start, as vLLM does, `reserve_fraction`: that whole share free, and big enough to hold
the requirement); the host's labels must match; allowed hosts only when some are named. Among the hosts that
can take it: a fit without degraded GPUs first (deployments/inventory/gpu_health.py: pending memory repairs, ECC
warnings, sustained thermal slowdown; a degraded GPU is used only when nothing else fits, and the explanation says
so), then a preferred host (e.g. one already holding the weights), then GPUs inside one NVLink group, then best fit
(the least memory left over, so big GPUs stay free for big models), then the name — so the same inventory always
gives the same answer. Within a host the fewest degraded GPUs are taken. Pure: plain data in, a decision (or a
reason) out; no Django.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from deployments.units import GB


@dataclass(frozen=True)
class GpuState:
    index: int
    memory_total: int
    memory_reserved: int = 0
    nvlink_group: str = ""
    healthy: bool = True  # False: failed or missing, never placed on
    name: str = ""
    power_limit_w: float | None = None
    degraded: bool = False  # placed on only when no fit without degraded GPUs exists

    @property
    def available(self) -> int:
        return self.memory_total - self.memory_reserved

    def usable(self, keep_free_fraction: float = 0.0) -> int:
        """What a server may fill: unreserved memory less the share of the GPU it must leave free."""
        return max(0, self.available - int(keep_free_fraction * self.memory_total))


@dataclass(frozen=True)
class HostState:
    name: str
    gpus: tuple[GpuState, ...]
    labels: dict = field(default_factory=dict)
    online: bool = True


@dataclass(frozen=True)
class Requirement:
    memory_per_gpu: int
    gpu_count: int = 1
    labels: dict = field(default_factory=dict)
    hosts: frozenset[str] | None = None  # only these, when given
    preferred_hosts: tuple[str, ...] = ()
    keep_free_fraction: float = 0.0  # TGI's warm-up leaves (1 - TGI_WIGGLE_ROOM) of each GPU untouched
    # vLLM takes reserve_fraction x (memory_total - reserve_base) of each GPU at start and refuses a GPU with less
    # free beside `start_overhead` (its CUDA context); `memory_per_gpu` is then what that share must hold.
    reserve_fraction: float = 0.0
    reserve_base: int = 0
    start_overhead: int = 0

    def share(self, gpu: GpuState) -> int:
        """The share of this GPU a reserving server takes (0 for one that fills free memory)."""
        return int(self.reserve_fraction * (gpu.memory_total - self.reserve_base)) if self.reserve_fraction else 0

    def usable(self, gpu: GpuState) -> int | None:
        """What is left of the GPU beside this requirement's claim on it, or None when it cannot take it."""
        if not gpu.healthy:
            return None
        if self.reserve_fraction:
            share = self.share(gpu)
            left = gpu.available - share - self.start_overhead
            return left if share >= self.memory_per_gpu and left >= 0 else None
        usable = gpu.available - (int(self.keep_free_fraction * gpu.memory_total) if self.keep_free_fraction else 0)
        return usable if usable >= self.memory_per_gpu else None


@dataclass(frozen=True)
class Placement:
    host: str
    gpu_indexes: tuple[int, ...]
    explanation: str


class PlacementError(Exception):
    """Nothing fits; the message says why, in words a user can act on."""


# A GPU with what the requirement may use of it, computed once per decision.
Fit = tuple[int, int, GpuState]  # (usable bytes, index, gpu): sorts as best fit, then index


def _fit_order(fit: Fit) -> tuple[bool, int, int]:
    return fit[2].degraded, fit[0], fit[1]  # healthy before degraded, then best fit, then index


def _degraded(chosen: list[Fit]) -> int:
    return sum(1 for fit in chosen if fit[2].degraded)


def _pick(fits: list[Fit], count: int) -> tuple[list[Fit], bool] | None:
    """The best `count` GPUs of one host: the fewest degraded, then inside one NVLink group when possible, then the
    tightest fit."""
    if len(fits) < count:
        return None
    fits = sorted(fits, key=_fit_order)
    plain = fits[:count]
    if count > 1:
        groups: dict[str, list[Fit]] = defaultdict(list)
        for fit in fits:
            if fit[2].nvlink_group:
                groups[fit[2].nvlink_group].append(fit)
        linked = [members[:count] for members in groups.values() if len(members) >= count]
        if linked:
            best = min(linked, key=lambda chosen: (_degraded(chosen), sum(fit[0] for fit in chosen), chosen[0][1]))
            if _degraded(best) <= _degraded(plain):
                return best, True
    return plain, count == 1


def place(requirement: Requirement, hosts: list[HostState]) -> Placement:
    """Choose a host and GPUs for the requirement, or raise PlacementError with the reason."""
    if requirement.gpu_count < 1 or requirement.memory_per_gpu <= 0:
        raise PlacementError("A placement needs at least one GPU and some memory per GPU.")
    best, reasons = None, []
    preferred = set(requirement.preferred_hosts)
    keep, need = requirement.keep_free_fraction, requirement.memory_per_gpu
    reserving = requirement.reserve_fraction > 0
    for host in hosts:
        if requirement.hosts is not None and host.name not in requirement.hosts:
            continue
        if not host.online:
            reasons.append(f"{host.name} is offline")
            continue
        if any(host.labels.get(key) != value for key, value in requirement.labels.items()):
            continue
        fits = []
        if reserving:
            for g in host.gpus:
                left = requirement.usable(g)
                if left is not None:
                    fits.append((left, g.index, g))
        else:
            for g in host.gpus:  # inlined GpuState.usable: this loop runs for every GPU of every host
                usable = g.memory_total - g.memory_reserved - (int(keep * g.memory_total) if keep else 0)
                if g.healthy and usable >= need:
                    fits.append((usable, g.index, g))
        chosen = _pick(fits, requirement.gpu_count)
        if chosen is None:
            reasons.append(f"{host.name}: {len(fits)} GPU(s) {_wanted(requirement)}")
            continue
        picked, one_group = chosen
        key = (
            _degraded(picked),
            host.name not in preferred,
            not one_group,
            sum(fit[0] for fit in picked) - (0 if reserving else requirement.memory_per_gpu * len(picked)),
            host.name,
        )
        if best is None or key < best[0]:
            best = (key, host, [fit[2] for fit in picked], one_group)
    if best is None:
        need = f"{requirement.gpu_count} GPU(s) {_wanted(requirement)} each on one host"
        detail = "; ".join(reasons[:5]) or "no host matches the labels or host constraints"
        raise PlacementError(f"No host has {need} ({detail}).")
    _key, host, gpus, one_group = best
    indexes = tuple(sorted(g.index for g in gpus))
    ordered = sorted(gpus, key=lambda g: g.index)
    free = ", ".join(f"{g.available / GB:.0f}" for g in ordered)
    link = " in one NVLink group" if one_group and len(gpus) > 1 else ""
    if reserving:
        shares = ", ".join(f"{requirement.share(g) / GB:.1f}" for g in ordered)
        needed = f"{requirement.reserve_fraction:g} of each GPU ({shares} GB) reserved at start"
    else:
        needed = f"{len(gpus)} x {requirement.memory_per_gpu / GB:.1f} GB needed"
    explanation = f"GPU {','.join(map(str, indexes))} on {host.name}{link}: {needed}, {free} GB free"
    degraded = [g.index for g in ordered if g.degraded]
    if degraded:
        explanation += f"; degraded GPU {','.join(map(str, degraded))} used: no fit without degraded GPUs"
    return Placement(host=host.name, gpu_indexes=indexes, explanation=explanation)


def _wanted(requirement: Requirement) -> str:
    """What each GPU must offer, in words."""
    if requirement.reserve_fraction:
        return (
            f"with {requirement.reserve_fraction:g} of their memory free, holding "
            f"{requirement.memory_per_gpu / GB:.1f} GB"
        )
    return f"with {requirement.memory_per_gpu / GB:.1f} GB free"

"""Placement: which host and GPUs take a workload. Pure: plain data in, a decision (or a reason) out.

Rules, in order: all shards on one host; only online, healthy GPUs with enough unreserved memory;
the host's labels must match; allowed hosts only when some are named. Among the hosts that can take it:
a preferred host first (e.g. one already holding the weights), then GPUs inside one NVLink group, then
best fit (the least memory left over, so big GPUs stay free for big models), then the name — so the
same inventory always gives the same answer.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

GB = 10**9


@dataclass(frozen=True)
class GpuState:
    index: int
    memory_total: int
    memory_reserved: int = 0
    nvlink_group: str = ""
    healthy: bool = True
    name: str = ""
    power_limit_w: float | None = None

    @property
    def available(self) -> int:
        return self.memory_total - self.memory_reserved


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


@dataclass(frozen=True)
class Placement:
    host: str
    gpu_indexes: tuple[int, ...]
    explanation: str


class PlacementError(Exception):
    """Nothing fits; the message says why, in words a user can act on."""


def _pick(gpus: list[GpuState], count: int) -> tuple[list[GpuState], bool] | None:
    """The best `count` GPUs of one host: inside one NVLink group when possible, tightest fit."""
    groups: dict[str, list[GpuState]] = defaultdict(list)
    for gpu in gpus:
        if gpu.nvlink_group:
            groups[gpu.nvlink_group].append(gpu)
    linked = [
        sorted(members, key=lambda g: (g.available, g.index))[:count]
        for members in groups.values()
        if len(members) >= count
    ]
    if linked and count > 1:
        return min(linked, key=lambda chosen: (sum(g.available for g in chosen), chosen[0].index)), True
    if len(gpus) < count:
        return None
    return sorted(gpus, key=lambda g: (g.available, g.index))[:count], count == 1


def place(requirement: Requirement, hosts: list[HostState]) -> Placement:
    """Choose a host and GPUs for the requirement, or raise PlacementError with the reason."""
    if requirement.gpu_count < 1 or requirement.memory_per_gpu <= 0:
        raise PlacementError("A placement needs at least one GPU and some memory per GPU.")
    best, reasons = None, []
    preferred = set(requirement.preferred_hosts)
    for host in hosts:
        if requirement.hosts is not None and host.name not in requirement.hosts:
            continue
        if not host.online:
            reasons.append(f"{host.name} is offline")
            continue
        if any(host.labels.get(key) != value for key, value in requirement.labels.items()):
            continue
        fitting = [g for g in host.gpus if g.healthy and g.available >= requirement.memory_per_gpu]
        chosen = _pick(fitting, requirement.gpu_count)
        if chosen is None:
            reasons.append(f"{host.name}: {len(fitting)} GPU(s) with {requirement.memory_per_gpu / GB:.1f} GB free")
            continue
        gpus, one_group = chosen
        key = (
            host.name not in preferred,
            not one_group,
            sum(g.available for g in gpus) - requirement.memory_per_gpu * len(gpus),
            host.name,
        )
        if best is None or key < best[0]:
            best = (key, host, gpus, one_group)
    if best is None:
        need = f"{requirement.gpu_count} GPU(s) with {requirement.memory_per_gpu / GB:.1f} GB free each on one host"
        detail = "; ".join(reasons[:5]) or "no host matches the labels or host constraints"
        raise PlacementError(f"No host has {need} ({detail}).")
    _key, host, gpus, one_group = best
    indexes = tuple(sorted(g.index for g in gpus))
    free = ", ".join(f"{g.available / GB:.0f}" for g in sorted(gpus, key=lambda g: g.index))
    link = " in one NVLink group" if one_group and len(gpus) > 1 else ""
    explanation = (
        f"GPU {','.join(map(str, indexes))} on {host.name}{link}: {len(gpus)} x "
        f"{requirement.memory_per_gpu / GB:.1f} GB needed, {free} GB free"
    )
    return Placement(host=host.name, gpu_indexes=indexes, explanation=explanation)

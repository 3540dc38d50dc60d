"""The inventory as the VRAM planner sees it: per GPU, memory not yet reserved."""

from __future__ import annotations

from deployments.inventory.selectors import host_states


def inventory_capacity() -> list:
    """Every host with its healthy GPUs; free means total minus reservations (what placement counts)."""
    from deployments.sizing import GpuCapacity, HostCapacity

    hosts = []
    for state in host_states():
        gpus = [
            GpuCapacity(
                index=g.index,
                name=g.name,
                memory_total=g.memory_total,
                memory_free=g.available,
                power_limit_w=g.power_limit_w,
            )
            for g in state.gpus
            if g.healthy
        ]
        hosts.append(HostCapacity(name=state.name, gpus=gpus, online=state.online))
    return hosts

"""The inventory as the VRAM planner sees it: per GPU, memory not yet reserved."""

from __future__ import annotations

from django.db.models import QuerySet

from deployments.inventory.selectors import host_states
from deployments.models import Host
from deployments.sizing import GpuCapacity, HostCapacity


def inventory_capacity(hosts: QuerySet[Host] | None = None, *, except_holder: str | None = None) -> list[HostCapacity]:
    """Every host (or `hosts`) with its GPUs that may be placed on (degraded ones marked); free means total minus
    reservations, as placement counts (`except_holder`'s own reservations are free to it)."""
    capacities = []
    for state in host_states(hosts, except_holder=except_holder):
        gpus = [
            GpuCapacity(
                index=g.index,
                name=g.name,
                memory_total=g.memory_total,
                memory_free=g.available,
                power_limit_w=g.power_limit_w,
                nvlink_group=g.nvlink_group,
                degraded=g.degraded,
            )
            for g in state.gpus
            if g.healthy
        ]
        capacities.append(HostCapacity(name=state.name, gpus=gpus, online=state.online))
    return capacities

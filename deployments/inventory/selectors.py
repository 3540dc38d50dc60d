"""Reading the inventory for the planner and placement (selectors: start from what the user may see)."""

from __future__ import annotations

from django.db.models import Prefetch, Q, QuerySet, Sum

from console import roles
from console.permissions import restrict
from deployments.inventory.placement import GpuState, HostState
from deployments.models import Gpu, Host


def host_list(*, user) -> QuerySet[Host]:
    return restrict(Host.objects.all(), user, roles.VIEW).prefetch_related(
        Prefetch("gpus", queryset=Gpu.objects.annotate(reserved=Sum("reservations__memory_bytes")).order_by("index"))
    )


def host_states(hosts: QuerySet[Host] | None = None, *, except_holder: str | None = None) -> list[HostState]:
    """The inventory as placement sees it: reservations counted (but `except_holder`'s own, when a deployment
    is placed again, with those of its replicas, "<holder>:replica:<n>"); failed or missing GPUs unhealthy (never
    placed on), degraded ones marked (placed on only when nothing else fits)."""
    hosts = hosts if hosts is not None else Host.objects.all()
    mine = Q(pk__in=[])
    if except_holder:
        mine = Q(reservations__holder=except_holder) | Q(reservations__holder__startswith=f"{except_holder}:")
    gpus = Gpu.objects.annotate(reserved=Sum("reservations__memory_bytes", filter=~mine)).order_by("index")
    states = []
    for host in hosts.prefetch_related(Prefetch("gpus", queryset=gpus)):
        states.append(
            HostState(
                name=host.name,
                labels=host.labels or {},
                online=host.status in (Host.Status.ONLINE, Host.Status.MANUAL),
                gpus=tuple(
                    GpuState(
                        index=g.index,
                        memory_total=g.memory_total,
                        memory_reserved=g.reserved or 0,
                        nvlink_group=g.nvlink_group,
                        name=g.name,
                        power_limit_w=g.power_limit_w,
                        healthy=g.health in (Gpu.Health.OK, Gpu.Health.UNKNOWN, Gpu.Health.DEGRADED),
                        degraded=g.health == Gpu.Health.DEGRADED,
                    )
                    for g in host.gpus.all()
                ),
            )
        )
    return states

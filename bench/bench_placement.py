"""Placement over 1,000 hosts x 8 GPUs with existing reservations (goal <= 50 ms per decision).

It times `deployments.inventory.placement.place`, the one engine every launch calls (through the planner's
`choose_gpus`), with the share of each GPU a TGI server leaves free, as launches ask."""

from __future__ import annotations

import random
import time

from bench.common import Figure, median
from deployments.inventory.placement import GpuState, HostState, PlacementError, Requirement, place
from deployments.sizing.plan import KEEP_FREE_FRACTION
from deployments.units import GB

HOSTS, GPUS, DECISIONS = 1_000, 8, 200


def _inventory(rng: random.Random) -> list[HostState]:
    hosts = []
    for h in range(HOSTS):
        size = rng.choice((24, 48, 80, 141)) * GB
        gpus = tuple(
            GpuState(
                index=i,
                memory_total=size,
                memory_reserved=rng.choice((0, 0, size // 2, size)),
                nvlink_group=f"nvlink-{i // 4}" if h % 2 else "",
            )
            for i in range(GPUS)
        )
        hosts.append(HostState(name=f"gpu-node-{h:04d}", gpus=gpus, labels={"zone": f"z{h % 4}"}))
    return hosts


def run() -> list[Figure]:
    rng = random.Random(7)
    hosts = _inventory(rng)
    requirements = [
        Requirement(
            memory_per_gpu=rng.choice((14, 35, 70, 120)) * GB,
            gpu_count=rng.choice((1, 2, 4, 8)),
            labels={"zone": "z1"} if rng.random() < 0.3 else {},
            keep_free_fraction=KEEP_FREE_FRACTION,
        )
        for _ in range(DECISIONS)
    ]
    decisions, refused = [], 0
    for requirement in requirements:
        start = time.perf_counter()
        try:
            place(requirement, hosts)
        except PlacementError:
            refused += 1
        decisions.append(time.perf_counter() - start)
    # Same-run reference: one plain pass summing every GPU's free memory.
    start = time.perf_counter()
    sum(g.available for host in hosts for g in host.gpus)
    scan = time.perf_counter() - start
    per_decision = median(decisions) * 1000
    return [
        Figure(
            "placement_decision_1000x8",
            per_decision,
            "ms",
            "<=",
            50,
            f"median of {DECISIONS} decisions ({refused} refused with a reason), worst "
            f"{max(decisions) * 1000:.1f} ms; a bare scan of all {HOSTS * GPUS} GPUs took {scan * 1000:.2f} ms",
        )
    ]

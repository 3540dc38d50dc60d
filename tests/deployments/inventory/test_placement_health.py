"""Placement respects GPU health: never a failed or missing GPU, a degraded one only when nothing else fits (and the
explanation says so); the inventory read from the database marks them so."""

from __future__ import annotations

import pytest

from deployments.inventory.capacity import inventory_capacity
from deployments.inventory.placement import GpuState, HostState, PlacementError, Requirement, place
from deployments.inventory.selectors import host_states
from deployments.models import Gpu
from deployments.sizing.plan import host_state
from deployments.units import GB
from tests.factories.inventory import GpuFactory, HostFactory


def gpu(index, size=80, degraded=False, healthy=True, group="", reserved=0):
    return GpuState(
        index,
        int(size * GB),
        memory_reserved=int(reserved * GB),
        degraded=degraded,
        healthy=healthy,
        nvlink_group=group,
    )


def test_a_degraded_gpu_loses_to_any_healthy_fit_even_a_worse_one():
    # The degraded GPU is the tightest fit and on the preferred host: the healthy, looser one still wins.
    hosts = [HostState("a", (gpu(0, 48, degraded=True),)), HostState("b", (gpu(0, 141),))]
    chosen = place(Requirement(memory_per_gpu=40 * GB, preferred_hosts=("a",)), hosts)
    assert (chosen.host, chosen.gpu_indexes) == ("b", (0,))
    assert "degraded" not in chosen.explanation


def test_within_a_host_the_healthy_gpus_are_taken_first():
    host = HostState("a", (gpu(0, 48, degraded=True), gpu(1, 80), gpu(2, 80, degraded=True)))
    assert place(Requirement(memory_per_gpu=40 * GB), [host]).gpu_indexes == (1,)


def test_a_degraded_gpu_is_used_when_nothing_else_fits_and_the_explanation_says_so():
    hosts = [HostState("a", (gpu(0, degraded=True), gpu(1))), HostState("b", (gpu(0, 24),))]
    chosen = place(Requirement(memory_per_gpu=40 * GB, gpu_count=2), hosts)
    assert (chosen.host, chosen.gpu_indexes) == ("a", (0, 1))
    assert chosen.explanation.endswith("degraded GPU 0 used: no fit without degraded GPUs")
    # The same inventory, the same answer.
    assert place(Requirement(memory_per_gpu=40 * GB, gpu_count=2), hosts) == chosen


def test_a_healthy_pcie_pair_beats_an_nvlink_pair_with_a_degraded_gpu():
    host = HostState(
        "a",
        (
            gpu(0, group="nvlink-0", degraded=True),
            gpu(1, group="nvlink-0"),
            gpu(2),
            gpu(3),
        ),
    )
    chosen = place(Requirement(memory_per_gpu=40 * GB, gpu_count=2), [host])
    assert chosen.gpu_indexes == (1, 2) and "NVLink" not in chosen.explanation and "degraded" not in chosen.explanation
    linked = HostState("a", (gpu(0, group="nvlink-0"), gpu(1, group="nvlink-0"), gpu(2), gpu(3, degraded=True)))
    assert place(Requirement(memory_per_gpu=40 * GB, gpu_count=2), [linked]).gpu_indexes == (0, 1)


def test_a_failed_gpu_is_never_used_even_when_it_alone_would_fit():
    hosts = [HostState("a", (gpu(0, 141, healthy=False), gpu(1, 24)))]
    with pytest.raises(PlacementError, match=r"a: 0 GPU\(s\)"):
        place(Requirement(memory_per_gpu=40 * GB), hosts)
    reserving = Requirement(memory_per_gpu=10 * GB, reserve_fraction=0.9)
    assert place(reserving, [HostState("a", (gpu(0, healthy=False), gpu(1)))]).gpu_indexes == (1,)


@pytest.mark.django_db
def test_the_inventory_marks_failed_and_missing_unplaceable_and_degraded_avoided():
    node = HostFactory(name="node")
    for health in (Gpu.Health.OK, Gpu.Health.DEGRADED, Gpu.Health.FAILED, Gpu.Health.MISSING, Gpu.Health.UNKNOWN):
        GpuFactory(host=node, health=health, memory_total=80 * GB)
    [state] = host_states()
    assert [(g.index, g.healthy, g.degraded) for g in state.gpus] == [
        (0, True, False),
        (1, True, True),
        (2, False, False),
        (3, False, False),
        (4, True, False),
    ]
    # The planner's path (inventory capacity -> its host state) keeps the mark and drops the unplaceable.
    [capacity] = inventory_capacity()
    assert [(g.index, g.degraded) for g in host_state(capacity).gpus] == [(0, False), (1, True), (4, False)]
    chosen = place(Requirement(memory_per_gpu=40 * GB, gpu_count=3), [host_state(capacity)])
    assert chosen.gpu_indexes == (0, 1, 4) and "degraded GPU 1 used" in chosen.explanation

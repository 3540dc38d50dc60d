"""Placement: one host, fitting GPUs, NVLink groups first, best fit, deterministic, explained refusals."""

from __future__ import annotations

import pytest

from deployments.inventory.placement import GpuState, HostState, PlacementError, Requirement, place
from deployments.sizing import GpuCapacity, HostCapacity, size_model
from deployments.units import GB
from tests.deployments.sizing.test_sizing import metadata


def host(name, *sizes, group="", reserved=(), online=True, labels=None, unhealthy=()):
    gpus = tuple(
        GpuState(
            index=i,
            memory_total=int(size * GB),
            memory_reserved=int(dict(reserved).get(i, 0) * GB),
            nvlink_group=group,
            healthy=i not in unhealthy,
        )
        for i, size in enumerate(sizes)
    )
    return HostState(name=name, gpus=gpus, online=online, labels=labels or {})


def test_all_shards_on_one_host_and_the_reason_when_nothing_fits():
    hosts = [host("a", 80), host("b", 80)]
    with pytest.raises(PlacementError, match=r"2 GPU\(s\) with 70.0 GB free each on one host"):
        place(Requirement(memory_per_gpu=70 * GB, gpu_count=2), hosts)


def test_best_fit_keeps_big_gpus_free():
    hosts = [host("big", 141), host("small", 48), host("medium", 80)]
    assert place(Requirement(memory_per_gpu=40 * GB), hosts).host == "small"


def test_prefers_one_nvlink_group_over_a_tighter_pcie_fit():
    nvlink = HostState("nv", tuple(GpuState(i, 80 * GB, nvlink_group="nvlink-0") for i in range(4)))
    pcie = host("pcie", 48, 48)
    decision = place(Requirement(memory_per_gpu=40 * GB, gpu_count=2), [pcie, nvlink])
    assert decision.host == "nv" and decision.gpu_indexes == (0, 1)
    assert "in one NVLink group" in decision.explanation


def test_preferred_host_wins_when_it_fits():
    hosts = [host("a", 48), host("has-weights", 141)]
    decision = place(Requirement(memory_per_gpu=40 * GB, preferred_hosts=("has-weights",)), hosts)
    assert decision.host == "has-weights"


def test_labels_host_constraints_health_and_offline():
    hosts = [
        host("x", 80, labels={"zone": "a"}),
        host("y", 80, labels={"zone": "b"}),
        host("z", 80, online=False),
        host("w", 80, unhealthy=(0,)),
    ]
    assert place(Requirement(memory_per_gpu=10 * GB, labels={"zone": "b"}), hosts).host == "y"
    assert place(Requirement(memory_per_gpu=10 * GB, hosts=frozenset({"x"})), hosts).host == "x"
    with pytest.raises(PlacementError, match="z is offline"):
        place(Requirement(memory_per_gpu=10 * GB, hosts=frozenset({"z", "w"})), hosts)


def test_deterministic_and_explained():
    hosts = [host("n2", 80, 80), host("n1", 80, 80)]
    first = place(Requirement(memory_per_gpu=70 * GB, gpu_count=2), hosts)
    assert first == place(Requirement(memory_per_gpu=70 * GB, gpu_count=2), list(reversed(hosts)))
    assert first.explanation == "GPU 0,1 on n1: 2 x 70.0 GB needed, 80, 80 GB free"


def test_reservations_count_as_taken():
    hosts = [host("a", 80, 80, 80, reserved={0: 60}), host("b", 141)]
    decision = place(Requirement(memory_per_gpu=30 * GB, gpu_count=2), hosts)
    assert (decision.host, decision.gpu_indexes) == ("a", (1, 2))
    with pytest.raises(PlacementError):
        place(Requirement(memory_per_gpu=30 * GB, gpu_count=2), [host("a", 80, 80, reserved={0: 60})])


def test_the_share_a_server_leaves_free_counts_as_taken():
    # TGI's warm-up leaves 10 % of each GPU untouched: 75 GB of an 80 GB GPU is more than it may fill.
    hosts = [host("a", 80), host("b", 96)]
    assert place(Requirement(memory_per_gpu=75 * GB), hosts).host == "a"
    chosen = place(Requirement(memory_per_gpu=75 * GB, keep_free_fraction=0.1), hosts)
    assert chosen.host == "b"
    with pytest.raises(PlacementError):
        place(Requirement(memory_per_gpu=87 * GB, keep_free_fraction=0.1), hosts)


def test_the_planner_places_through_this_engine():
    """The launch path (the planner's choose_gpus) takes one NVLink pair over a tighter PCIe pair."""
    pcie = HostCapacity("pcie", [GpuCapacity(i, "A100", 80 * GB, 80 * GB) for i in range(4)])
    linked = HostCapacity(
        "linked",
        [GpuCapacity(i, "A100", 80 * GB, 80 * GB, nvlink_group="nv0" if i in (2, 3) else "") for i in range(4)],
    )
    report = size_model(metadata("deepseek-llm-7b-base"), inventory=[pcie, linked], num_shard=2).as_dict()
    assert report["gpu_set"]["host"] == "linked" and report["gpu_set"]["gpu_indexes"] == [2, 3]
    preferred = size_model(
        metadata("deepseek-llm-7b-base"), inventory=[pcie, linked], num_shard=2, preferred_hosts=["pcie"]
    ).as_dict()
    assert preferred["gpu_set"]["host"] == "pcie"  # the host holding the files wins over the NVLink pair

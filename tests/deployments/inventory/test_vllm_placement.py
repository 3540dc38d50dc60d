"""Placement of vLLM servers: vLLM takes gpu_memory_utilization of each GPU at start, so a GPU takes one only when
that whole share is free beside its CUDA context, and a launch reserves the share on each placed GPU; TGI's
placement stays as it was. Pure placement first, then the planner on an inventory, then launches and the API."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from console.errors import ApplicationError
from deployments.inventory.placement import PlacementError, Requirement, place
from deployments.models import Deployment, GpuReservation
from deployments.serving import services as lifecycle
from deployments.serving.planning import verdict
from deployments.serving.specs import clean_spec
from deployments.sizing import GB, GpuCapacity, HostCapacity, size_model
from deployments.sizing.memory import CUDA_CONTEXT_BYTES
from deployments.sizing.vllm import VllmLimits
from deployments.sizing.vllm_engine import DRIVER_RESERVED_BYTES
from tests.deployments.inventory.test_placement import host
from tests.deployments.sizing.test_vllm_memory import H200, metadata
from tests.factories import GpuFactory, HostFactory
from tests.support.deploy_fixtures import ready_artifact
from tests.support.model_dirs import write_llama_dir


def share(total: int, utilization: float) -> int:
    """vLLM's share of a GPU the inventory counts `total` bytes: utilization x what CUDA reports."""
    return math.ceil(utilization * (total - DRIVER_RESERVED_BYTES))


# --- the placement engine ----------------------------------------------------------------------------------------


def test_a_reserving_server_takes_a_gpu_only_with_its_whole_share_free():
    need = Requirement(memory_per_gpu=20 * GB, reserve_fraction=0.9)
    # 80 GB with 10 GB taken leaves 70 GB: less than 0.9 x 80 = 72 GB, though 20 GB would fit many times.
    with pytest.raises(PlacementError, match=r"with 0.9 of their memory free, holding 20.0 GB"):
        place(need, [host("busy", 80, reserved=[(0, 10)])])
    decision = place(need, [host("busy", 80, reserved=[(0, 10)]), host("free", 80)])
    assert decision.host == "free"
    assert "0.9 of each GPU (72.0 GB) reserved at start" in decision.explanation
    # What the share must hold does not fit in it: no GPU of that size will do, even empty.
    with pytest.raises(PlacementError):
        place(Requirement(memory_per_gpu=75 * GB, reserve_fraction=0.9), [host("free", 80)])
    # Beside the share, the server needs its CUDA context free at start.
    with pytest.raises(PlacementError):
        place(Requirement(memory_per_gpu=20 * GB, reserve_fraction=0.9, start_overhead=9 * GB), [host("free", 80)])


def test_tgi_placement_is_unchanged_by_the_reserve_rule():
    tgi = Requirement(memory_per_gpu=60 * GB, keep_free_fraction=0.1)
    assert place(tgi, [host("busy", 80, reserved=[(0, 10)])]).host == "busy"  # 70 - 8 kept free >= 60


def test_best_fit_among_gpus_whose_share_is_free():
    need = Requirement(memory_per_gpu=20 * GB, reserve_fraction=0.5)
    # 0.5 of 141 GB leaves 70.5 GB over, 0.5 of 80 GB 40 GB: the smaller GPU, keeping the big one free.
    assert place(need, [host("big", 141), host("small", 80)]).host == "small"


# --- the planner on an inventory ----------------------------------------------------------------------------------


def two_h200s(taken_on_0: int = 0, taken_on_1: int = 0) -> list[HostCapacity]:
    gpus = [
        GpuCapacity(0, "NVIDIA H200", H200, H200 - taken_on_0),
        GpuCapacity(1, "NVIDIA H200", H200, H200 - taken_on_1),
    ]
    return [HostCapacity("h200-node", gpus)]


def test_the_planner_skips_a_gpu_whose_free_memory_is_short_of_the_share():
    inventory = two_h200s(taken_on_0=20 * GB)
    vllm = size_model(metadata("deepseek-llm-7b-base"), inventory=inventory, vllm=VllmLimits(0.9))
    assert vllm.fits and vllm.primary.gpu_set.gpu_indexes == [1]
    # TGI fills what is free: the tighter GPU 0 still takes it, as before.
    tgi = size_model(metadata("deepseek-llm-7b-base"), inventory=inventory)
    assert tgi.fits and tgi.primary.gpu_set.gpu_indexes == [0]
    # A smaller share fits beside the 20 GB: best fit takes GPU 0 again.
    half = size_model(metadata("deepseek-llm-7b-base"), inventory=inventory, vllm=VllmLimits(0.5))
    assert half.fits and half.primary.gpu_set.gpu_indexes == [0]


def test_busy_gpus_are_a_reason_to_wait_not_a_refusal():
    report = size_model(metadata("deepseek-llm-7b-base"), inventory=two_h200s(20 * GB, 20 * GB), vllm=VllmLimits(0.9))
    assert report.fits is False
    [busy] = report.vllm_notes
    assert busy.field == "artifact"
    assert "No online host has 1 GPU(s) with gpu_memory_utilization 0.9 of their memory free" in busy.message


# --- launches reserve the share; the API names the field ------------------------------------------------------------


VLLM = {"backend": "vllm", "device": "gpu"}
TGI = {"device": "gpu", "max_input_tokens": 1024, "max_total_tokens": 2048}


@pytest.fixture
def one_h200(tmp_path):
    """One host with one GPU of an H200's size, a 7B Llama (config and safetensors header only) on it."""
    node = HostFactory(name="h200-node")
    GpuFactory(host=node, index=0, name="NVIDIA H200", memory_total=H200)
    return ready_artifact(node, write_llama_dir(tmp_path / "llama-7b", "7b"))


@pytest.mark.django_db
def test_a_vllm_launch_reserves_its_share_and_a_second_one_must_find_it_free(admin, one_h200):
    spec = {"artifact": one_h200.pk, **VLLM, "gpu_memory_utilization": 0.5}
    plan = verdict(clean_spec(spec))
    reserved = share(H200, 0.5) + CUDA_CONTEXT_BYTES
    assert plan.fits and plan.per_gpu_bytes == reserved
    assert plan.vllm["kv_tokens"] > 0 and plan.max_total_tokens == 4096  # the model's context: max_model_len
    assert any("gpu_memory_utilization 0.5" in line for line in plan.details)

    first = lifecycle.deployment_create(actor=admin, name="first", spec=spec)
    [reservation] = GpuReservation.objects.filter(holder=first.holder)
    assert reservation.memory_bytes == reserved  # the whole share (75.1 GB) and the CUDA context, not the weights

    # 150.8 - 75.8 = 75.0 GB are left: less than a second 0.5 share with its context and what vLLM keeps free.
    second = verdict(clean_spec({**spec, "artifact": one_h200.pk}))
    assert second.fits is False and "gpu_memory_utilization 0.5 of their memory free" in second.reason
    with pytest.raises(ApplicationError) as refused:
        lifecycle.deployment_create(actor=admin, name="second", spec=spec)
    assert refused.value.field == "artifact"
    assert Deployment.objects.count() == 1
    # A smaller share fits beside it; TGI is placed as before, reserving its own estimate.
    assert verdict(clean_spec({**spec, "gpu_memory_utilization": 0.3})).fits
    tgi = lifecycle.deployment_create(actor=admin, name="tgi", spec={"artifact": one_h200.pk, **TGI})
    [tgi_reservation] = GpuReservation.objects.filter(holder=tgi.holder)
    assert tgi_reservation.memory_bytes == verdict(clean_spec({"artifact": one_h200.pk, **TGI})).per_gpu_bytes
    assert tgi_reservation.memory_bytes < 20 * GB


@pytest.mark.django_db
def test_gpus_chosen_by_hand_must_have_the_share_free(admin, one_h200):
    GpuReservation.objects.create(gpu=one_h200.host.gpus.get(index=0), memory_bytes=100 * GB, holder="other:1")
    plan = verdict(clean_spec({"artifact": one_h200.pk, **VLLM, "gpu_indexes": [0]}))
    assert plan.fits is False
    assert "GPU 0 has 50.8 GB free; vLLM needs" in plan.reason


@pytest.mark.django_db
def test_the_api_names_the_setting_vllm_would_refuse(admin, api, one_h200):
    small = HostFactory(name="small-node")
    GpuFactory(host=small, index=0, name="NVIDIA L4", memory_total=24 * GB)
    on_small = ready_artifact(small, write_llama_dir(Path(one_h200.path).parent / "on-small", "7b"), "tests/other")
    answer = api(admin).post(
        "/api/v1/deployments/plan/",
        {"spec": {"artifact": on_small.pk, **VLLM, "gpu_memory_utilization": 0.3, "gpu_indexes": [0]}},
        expected=400,
    )
    assert "gpu_memory_utilization" in str(answer.data)
    too_long = api(admin).post(
        "/api/v1/deployments/plan/",
        {"spec": {"artifact": one_h200.pk, **VLLM, "max_model_len": 8192}},
        expected=400,
    )
    assert "max_model_len" in str(too_long.data)

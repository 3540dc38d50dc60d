"""The training memory estimate against peaks measured on a CUDA GPU: a random ~1B Llama (Llama 3.2 1B's shape)
trained in bf16 mixed precision on an H200, full and LoRA r=16 on q/v, micro batch 4 x 1024 tokens, with and
without gradient checkpointing (tests/fixtures/training-memory/cuda-h200.json, written by
scripts/gpu/finetune_checks.sh through bench/train_memory_probe.py --device cuda).

The allocator's peak (torch.cuda.max_memory_allocated) holds tensors only, so it is compared with the estimate
less its CUDA context allowance; the context is compared on its own."""

from __future__ import annotations

import json

import pytest

from deployments.sizing.memory import CUDA_CONTEXT_BYTES
from deployments.sizing.training import TrainingEstimate, TrainingSetup, estimate_training
from tests.support.fixtures import FIXTURES

RECORDED = json.loads((FIXTURES / "training-memory" / "cuda-h200.json").read_text())
RUNS = RECORDED["runs"]
GOAL = 0.15
# LoRA with gradient checkpointing is estimated 25 % above its measured peak (11.46 GB against 9.17 GB): its
# peak is mostly the loss head, which the estimate counts at 16 bytes per logit (3.5 fp32 copies, measured on
# CPU, plus the bf16 logits) where CUDA held about 11.4. It stays out of the 15 % check, on the safe side.
OUTSIDE_GOAL = {("lora", True)}


def run_id(run: dict) -> str:
    return f"{run['method']}-b{run['micro_batch']}-s{run['seq_len']}-ckpt{int(run['gradient_checkpointing'])}"


def estimate_for(run: dict) -> TrainingEstimate:
    """The planner's CUDA estimate for what the probe ran (scripts/gpu/finetune_checks.py compares the same)."""
    setup = TrainingSetup(
        method=run["method"],
        precision=run["precision"],
        micro_batch_size=run["micro_batch"],
        max_seq_len=run["seq_len"],
        gradient_accumulation=run["accumulation"],
        gradient_checkpointing=run["gradient_checkpointing"],
        lora_r=run["lora_r"] or 16,
        lora_target_modules=tuple(run["lora_targets"] or ()),
        device="cuda",
    )
    return estimate_training(run["config"], setup)


def test_the_recorded_runs_are_the_four_setups_of_a_1b_model_in_bf16_mixed_precision():
    assert sorted((r["method"], r["gradient_checkpointing"]) for r in RUNS) == [
        ("full", False),
        ("full", True),
        ("lora", False),
        ("lora", True),
    ]
    for run in RUNS:
        assert run["precision"] == "bf16" and not run["bf16_weights"]
        assert (run["micro_batch"], run["seq_len"], run["params"]) == (4, 1024, 1_235_814_400)
        assert run["device"].startswith("NVIDIA H200") and run["torch"].endswith("cu130")


@pytest.mark.parametrize(
    "run", [r for r in RUNS if (r["method"], r["gradient_checkpointing"]) not in OUTSIDE_GOAL], ids=run_id
)
def test_estimate_is_within_15_percent_of_the_measured_cuda_peak(run):
    est = estimate_for(run)
    assert est.params == run["params"] and est.trainable_params == run["trainable_params"]
    tensors = est.total - est.overhead
    assert abs(tensors - run["measured_bytes"]) <= GOAL * run["measured_bytes"]
    # The whole figure placement uses, against the peak plus what the process held outside the allocator.
    held = run["measured_bytes"] + run["context_bytes"]
    assert abs(est.total - held) <= GOAL * held


@pytest.mark.parametrize(
    "run", [r for r in RUNS if (r["method"], r["gradient_checkpointing"]) in OUTSIDE_GOAL], ids=run_id
)
def test_outside_the_goal_the_estimate_errs_above_the_peak_so_a_placed_run_still_fits(run):
    est = estimate_for(run)
    assert run["measured_bytes"] < est.total - est.overhead <= 1.3 * run["measured_bytes"]


def test_cuda_context_allowance_is_within_15_percent_of_the_measured_context():
    for run in RUNS:
        assert abs(CUDA_CONTEXT_BYTES - run["context_bytes"]) <= GOAL * run["context_bytes"]

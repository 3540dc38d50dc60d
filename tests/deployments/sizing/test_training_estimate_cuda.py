"""The training memory estimate's model state against a CUDA GPU: a random ~1B Llama (Llama 3.2 1B's shape)
trained in bf16 on an H200, micro batch 4 x 1024 tokens, with and without gradient checkpointing
(tests/fixtures/training-memory/cuda-h200.json, written by scripts/gpu/finetune_checks.sh through
bench/train_memory_probe.py --device cuda, the probe's own loop with `model(labels=...)`).

That loop computes the loss as transformers does (the full fp32 logits), not as the fine-tune program's TRL
SFTTrainer does (a fused, tiled LM head), so its peaks are not the program's and are no longer compared with the
estimate: test_training_estimate_sft.py compares the program's own peaks. What the loop still pins is what the
loss does not touch: the weights as the program loads them (LoRA over a frozen bf16 base with fp32 adapters, a
full fine-tune with bf16 weights, the `--bf16-weights` runs), the bf16 AdamW moments with no master copy, and the
CUDA context. The fixture's full runs with fp32 trainable weights under autocast are a setup the program never
runs."""

from __future__ import annotations

import json

import pytest

from bench.bench_training_memory import estimate_for as shared_estimate_for
from bench.bench_training_memory import run_id
from deployments.sizing.memory import CUDA_CONTEXT_BYTES
from deployments.sizing.training import TrainingEstimate
from tests.support.fixtures import FIXTURES

RECORDED = json.loads((FIXTURES / "training-memory" / "cuda-h200.json").read_text())
ALL_RUNS = RECORDED["runs"] + RECORDED["bf16_weight_runs"]
# What the program runs: a LoRA base is bf16 in every recorded run; a full fine-tune only in the bf16-weights ones.
PROGRAM_RUNS = [r for r in ALL_RUNS if r["method"] == "lora" or r["bf16_weights"]]
GOAL = 0.15


def estimate_for(run: dict) -> TrainingEstimate:
    """The planner's CUDA estimate for what the probe ran (bf16, as the program chose on the H200)."""
    return shared_estimate_for(run, device="cuda")


def test_the_checked_runs_are_the_four_setups_the_program_runs_on_a_1b_model_in_bf16():
    assert sorted((r["method"], r["gradient_checkpointing"]) for r in PROGRAM_RUNS) == [
        ("full", False),
        ("full", True),
        ("lora", False),
        ("lora", True),
    ]
    for run in PROGRAM_RUNS:
        assert run["precision"] == "bf16"
        assert (run["micro_batch"], run["seq_len"], run["params"]) == (4, 1024, 1_235_814_400)
        assert run["device"].startswith("NVIDIA H200") and run["torch"].endswith("cu130")
        # The model as the program loads it: every weight bf16 (LoRA's fp32 adapters add 4 bytes each).
        est = estimate_for(run)
        assert abs(run["after_model_allocated_bytes"] - est.weights) <= 0.001 * est.weights


@pytest.mark.parametrize("run", [r for r in PROGRAM_RUNS if r["method"] == "full"], ids=run_id)
def test_a_full_fine_tune_holds_bf16_weights_and_adamw_moments_and_no_master_copy(run):
    est = estimate_for(run)
    # After the first optimizer step (gradients dropped): bf16 weights and two bf16 moments, 6 bytes a parameter.
    after_step = run["after_step_allocated_bytes"][-1]
    assert abs(after_step - (est.weights + est.optimizer)) <= 0.01 * after_step
    assert est.master == 0 and est.optimizer == 4 * run["params"]


def test_cuda_context_allowance_is_within_15_percent_of_the_measured_context():
    for run in ALL_RUNS:
        assert abs(CUDA_CONTEXT_BYTES - run["context_bytes"]) <= GOAL * run["context_bytes"]

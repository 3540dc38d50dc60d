"""The training memory estimate against the fine-tune program's own peaks (goal: within 15 %): TRL's SFTTrainer
as workers/jobs/finetune_train.py builds it, measured by bench/train_memory_probe.py --trainer sft.

CPU (tests/fixtures/training-memory/cpu-sft.json): the random ~134M Llama in fp32, full and LoRA r=16 on q/v,
with and without gradient checkpointing, micro batch 2 x 512 and 4 x 1024 tokens; peak RSS minus post-import
RSS. CUDA (cuda-h200-sft.json): a random ~1B Llama (Llama 3.2 1B's shape) in bf16 on an H200, micro batch 4 x
1024, the same four methods; torch.cuda.max_memory_allocated, compared with the estimate less its CUDA context
allowance and, whole, with the peak plus the context the process held."""

from __future__ import annotations

import json

import pytest

from bench.bench_training_memory import estimate_for as shared_estimate_for
from bench.bench_training_memory import run_id
from deployments.sizing.training import TrainingEstimate, TrainingSetup, estimate_training
from tests.support.fixtures import FIXTURES

MEMORY = FIXTURES / "training-memory"
CPU_RUNS = json.loads((MEMORY / "cpu-sft.json").read_text())["runs"]
CUDA_RUNS = json.loads((MEMORY / "cuda-h200-sft.json").read_text())["runs"]
GOAL = 0.15


def cuda_estimate_for(run: dict) -> TrainingEstimate:
    """The planner's CUDA estimate for what the probe ran (bf16, as the program chose on the H200)."""
    return shared_estimate_for(run, device="cuda")


def test_the_recorded_runs_are_the_program_on_full_rows_of_the_setups_the_issue_names():
    for run in CPU_RUNS + CUDA_RUNS:
        assert run["trainer"] == "sft" and run["trl"] == "1.16.0"
        assert run["row_tokens"] == [run["seq_len"]]  # every micro batch is b x max_seq_len tokens
        assert len(run["losses"]) == run["steps"] >= 2
    assert all(run["precision"] == "fp32" and run["params"] >= 100_000_000 for run in CPU_RUNS)
    assert sorted(run_id(run) for run in CPU_RUNS) == sorted(
        f"{method}-b{b}-s{s}-ckpt{ckpt}"
        for method in ("full", "lora")
        for b, s in ((2, 512), (4, 1024))
        for ckpt in (0, 1)
    )
    assert sorted(run_id(run) for run in CUDA_RUNS) == [
        f"{m}-b4-s1024-ckpt{c}" for m in ("full", "lora") for c in (0, 1)
    ]
    for run in CUDA_RUNS:
        assert run["precision"] == "bf16" and run["params"] == 1_235_814_400
        assert run["device"].startswith("NVIDIA H200")


@pytest.mark.parametrize("run", CPU_RUNS, ids=run_id)
def test_estimate_is_within_15_percent_of_the_programs_cpu_peak(run):
    est = shared_estimate_for(run)
    assert est.params == run["params"] and est.trainable_params == run["trainable_params"]
    assert abs(est.total - run["measured_bytes"]) <= GOAL * run["measured_bytes"]


@pytest.mark.parametrize("run", CUDA_RUNS, ids=run_id)
def test_estimate_is_within_15_percent_of_the_programs_cuda_peak(run):
    est = cuda_estimate_for(run)
    assert est.params == run["params"] and est.trainable_params == run["trainable_params"]
    assert abs(est.total - est.overhead - run["measured_bytes"]) <= GOAL * run["measured_bytes"]
    held = run["measured_bytes"] + run["context_bytes"]
    assert abs(est.total - held) <= GOAL * held
    # The model as the program put it on the GPU: bf16 weights (LoRA's adapters fp32).
    assert abs(run["after_model_allocated_bytes"] - est.weights) <= 0.001 * est.weights


@pytest.mark.parametrize("run", [r for r in CUDA_RUNS if r["method"] == "full"], ids=run_id)
def test_the_programs_full_fine_tune_keeps_bf16_adamw_moments_and_no_master_copy(run):
    est = cuda_estimate_for(run)
    # After an optimizer step (gradients dropped): bf16 weights and two bf16 moments, 6 bytes a parameter.
    after_step = run["after_step_allocated_bytes"][-1]
    assert abs(after_step - (est.weights + est.optimizer)) <= 0.01 * after_step


def test_the_loss_step_no_longer_grows_with_tokens_times_vocabulary():
    # TRL's fused head scores at most 4,096 tokens x 32,768 vocabulary entries at a time: on a 1B model, 8x more
    # tokens add the layers' activations and the per-token hidden gradients, not 8x the (tokens x vocab) logits.
    config = CUDA_RUNS[0]["config"]
    short = estimate_training(config, TrainingSetup(method="lora", micro_batch_size=1, max_seq_len=4096))
    long = estimate_training(config, TrainingSetup(method="lora", micro_batch_size=8, max_seq_len=4096))
    more_tokens = 7 * 4096
    loss_step = long.activations - short.activations - more_tokens * 16 * short.activations_per_token_per_layer
    assert loss_step == more_tokens * 2048 * 8  # hidden copy (bf16), its fp32 gradient and the gradient's cast
    assert loss_step < more_tokens * config["vocab_size"] * 4 / 20  # under 5 % of those tokens' fp32 logits

"""The training memory estimate against the real peak of a run on CPU (goal: within 15 %).

For each configuration, bench/train_memory_probe.py --trainer sft runs the fine-tune program's own training (TRL's
SFTTrainer as workers/jobs/finetune_train.py builds it) on the ~134M random Llama in fp32 for 2 optimizer steps in
its own ML-environment process and reports peak RSS minus post-import RSS; the planner's estimate
(deployments.sizing.training, device cpu) is compared with it. One line per configuration: the gap in percent
of the measured peak. tests/fixtures/training-memory/cpu-sft.json holds a recorded run of these configurations.
"""

from __future__ import annotations

import json
import subprocess

from bench.common import ROOT, Figure
from deployments.sizing.training import TrainingSetup, estimate_training
from tests.support.serve_process import ml_env, ml_python

# (method, micro batch, max seq len, gradient checkpointing)
CONFIGURATIONS = [
    ("full", 2, 512, False),
    ("full", 2, 512, True),
    ("lora", 2, 512, False),
    ("lora", 2, 512, True),
    ("full", 4, 1024, False),
    ("lora", 4, 1024, True),
]
GOAL_PERCENT = 15


def probe(method: str, batch: int, seq_len: int, checkpointing: bool) -> dict:
    """One probe run in a fresh ML-environment process (a peak is per process)."""
    python = ml_python()
    if python is None:
        raise RuntimeError("the ML environment is missing (make ml-env)")
    command = [python, str(ROOT / "bench" / "train_memory_probe.py"), "--trainer", "sft", "--steps", "2"]
    command += ["--method", method]
    command += ["--micro-batch", str(batch), "--seq-len", str(seq_len)]
    command += ["--checkpointing"] if checkpointing else []
    done = subprocess.run(command, env=ml_env(), cwd=ROOT, capture_output=True, text=True, timeout=900, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_id(run: dict) -> str:
    """A recorded run's setup, e.g. lora-b4-s1024-ckpt1."""
    return f"{run['method']}-b{run['micro_batch']}-s{run['seq_len']}-ckpt{int(run['gradient_checkpointing'])}"


def estimate_for(run: dict, device: str = "cpu"):
    """The planner's estimate (an Estimate) for what a probe ran: on CPU in fp32 (what the program trains in
    there), on CUDA in the precision it ran; the unit tests read the same."""
    setup = TrainingSetup(
        method=run["method"],
        precision="fp32" if device == "cpu" else run["precision"],
        micro_batch_size=run["micro_batch"],
        max_seq_len=run["seq_len"],
        gradient_accumulation=run["accumulation"],
        gradient_checkpointing=run["gradient_checkpointing"],
        lora_r=run["lora_r"] or 16,
        lora_target_modules=tuple(run["lora_targets"] or ()),
        device=device,
    )
    return estimate_training(run["config"], setup)


def run() -> list[Figure]:
    figures = []
    for method, batch, seq_len, checkpointing in CONFIGURATIONS:
        measured = probe(method, batch, seq_len, checkpointing)
        estimated = estimate_for(measured).total
        gap = abs(estimated - measured["measured_bytes"]) / measured["measured_bytes"] * 100
        name = f"training_memory_{method}_b{batch}_s{seq_len}{'_ckpt' if checkpointing else ''}"
        note = (
            f"estimated {estimated / 1e9:.2f} GB, measured {measured['measured_bytes'] / 1e9:.2f} GB peak RSS "
            f"minus post-import RSS, {measured['params'] / 1e6:.0f}M params, fp32 on CPU, SFTTrainer"
        )
        figures.append(Figure(name, gap, "% off", "<=", GOAL_PERCENT, note))
    return figures

"""vllm_serve.py (the vLLM-flavoured development server) as a real subprocess in the ML environment, started as
`vllm serve <model> ...` would be, and a LoRA adapter for it made with peft."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.serve_process import ROOT, ServeProcess, ml_env, ml_python

# Run in the ML environment: a LoRA adapter whose B matrices are not zero (init_lora_weights=False, a fixed seed),
# so it changes the model's greedy answers, saved as peft saves it.
ADAPTER = """
import sys
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

model_dir, out_dir, seed, rank = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
config = LoraConfig(
    r=rank, lora_alpha=32, init_lora_weights=False, task_type="CAUSAL_LM",
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
)
torch.manual_seed(seed)
get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), config).save_pretrained(out_dir)
"""


def make_adapter(model_dir: Path, out_dir: Path, *, seed: int = 1234, rank: int = 8) -> Path:
    if not (out_dir / "adapter_config.json").is_file():
        subprocess.run(
            [ml_python(), "-c", ADAPTER, str(model_dir), str(out_dir), str(seed), str(rank)],
            check=True,
            env=ml_env(),
            cwd=ROOT,
            capture_output=True,
            timeout=300,
        )
    return out_dir


class VllmProcess(ServeProcess):
    """`python -m workers.jobs.vllm_serve serve <model> --host 127.0.0.1 --port P <args>`."""

    ready_line = "Starting vLLM server on"

    def __init__(self, model_dir: Path | str, *args: str, env: dict | None = None, port: int | None = None) -> None:
        super().__init__(model_dir, env=env, port=port)
        self.command = [
            ml_python(),
            "-m",
            "workers.jobs.vllm_serve",
            "serve",
            str(model_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *args,
        ]

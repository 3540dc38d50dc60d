"""The baseline for bench_serve: bare transformers `model.generate`, in the ML environment's own process.

    ML_PYTHON bench/ml_generate.py MODEL_DIR

Loads the model once, then answers one JSON command per stdin line with one JSON line on stdout:
{"prompts": [...], "max_new_tokens": N} runs one greedy `generate` call per prompt, in sequence, and answers
{"tokens": generated, "seconds": elapsed}. Staying alive lets the benchmark alternate bare and served runs,
so a change in the machine's speed during the run hits both sides alike.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging


def main(model_dir: str) -> None:
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def generate(prompt: str, max_new_tokens: int) -> int:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        return out.shape[1] - ids.input_ids.shape[1]

    generate("warm up", 4)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        started = time.perf_counter()
        tokens = sum(generate(prompt, command["max_new_tokens"]) for prompt in command["prompts"])
        print(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])

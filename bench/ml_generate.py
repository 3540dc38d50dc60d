"""The baseline for bench_serve: bare transformers `model.generate`, in the ML environment's own process.

    ML_PYTHON bench/ml_generate.py MODEL_DIR PROMPTS_JSON MAX_NEW_TOKENS

Prints one JSON line: tokens generated and seconds, for one call on the first prompt (single stream) and
for one call per prompt in sequence. Greedy, as the serve.py side of the benchmark asks for.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging


def main(model_dir: str, prompts: list[str], max_new_tokens: int) -> dict:
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

    def generate(prompt: str) -> int:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return out.shape[1] - ids.input_ids.shape[1]

    generate(prompts[0])  # warm-up, not timed
    started = time.perf_counter()
    single_tokens = generate(prompts[0])
    single = time.perf_counter() - started
    started = time.perf_counter()
    sequential_tokens = sum(generate(prompt) for prompt in prompts)
    sequential = time.perf_counter() - started
    return {"single_tokens": single_tokens, "single_seconds": single,
            "sequential_tokens": sequential_tokens, "sequential_seconds": sequential}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]))))

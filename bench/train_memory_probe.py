"""Measure the memory of a few training steps on CPU, for the training memory estimate to be checked against.

    .venv-ml/bin/python bench/train_memory_probe.py --method full --micro-batch 2 --seq-len 512 [--checkpointing]

Runs in the ML environment (torch, transformers, peft; nothing of the console). It builds a random-weight Llama
from a config (no download), trains it for a few steps in fp32 with AdamW on random token ids, and prints one
JSON line: the peak resident memory of the process (ru_maxrss) minus its resident memory right after the imports,
as the issue defines the figure ("peak minus post-import RSS"). Each configuration needs a fresh process: the
peak is per process.

The loop is what transformers' Trainer does per optimizer step (forward with labels, backward, AdamW step,
`zero_grad(set_to_none=True)`), without its data loader, so the measured memory is the model's own.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time


def _rss_bytes() -> int:
    """Current resident set size, from /proc/self/statm (pages)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


# ~134M parameters: a Llama with GPT-2-small widths and a 32,000-token vocabulary (untied head).
DEFAULT_CONFIG = {
    "model_type": "llama",
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 12,
    "intermediate_size": 2048,
    "vocab_size": 32000,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-6,
}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("full", "lora"), default="full")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--accumulation", type=int, default=1)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-targets", default="q_proj,v_proj")
    parser.add_argument("--config", help="a JSON config to use instead of the built-in ~134M Llama")
    args = parser.parse_args(argv)

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    baseline = _rss_bytes()
    config_dict = json.loads(args.config) if args.config else DEFAULT_CONFIG
    config = LlamaConfig(**{k: v for k, v in config_dict.items() if k != "model_type"})
    started = time.perf_counter()
    model = LlamaForCausalLM(config).to(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    if args.method == "lora":
        targets = args.lora_targets.split(",")
        model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=targets))
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    after_model = _rss_bytes()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _step in range(args.steps):
        for _micro in range(args.accumulation):
            ids = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq_len), generator=generator)
            loss = model(input_ids=ids, labels=ids).loss / args.accumulation
            loss.backward()
            losses.append(round(float(loss.detach()), 4))
            del loss
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = _peak_rss_bytes()
    print(
        json.dumps(
            {
                "method": args.method,
                "micro_batch": args.micro_batch,
                "seq_len": args.seq_len,
                "accumulation": args.accumulation,
                "gradient_checkpointing": args.checkpointing,
                "steps": args.steps,
                "lora_r": args.lora_r if args.method == "lora" else None,
                "lora_targets": args.lora_targets.split(",") if args.method == "lora" else None,
                "config": config_dict,
                "params": params,
                "trainable_params": sum(p.numel() for p in trainable),
                "baseline_rss_bytes": baseline,
                "after_model_rss_bytes": after_model,
                "peak_rss_bytes": peak,
                "measured_bytes": peak - baseline,
                "losses": losses,
                "seconds": round(time.perf_counter() - started, 1),
                "torch": torch.__version__,
                "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
                "attention": model.config._attn_implementation,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main(sys.argv[1:])

"""Measure the memory of a few training steps on CPU or a CUDA GPU, for the training memory estimate to be checked
against.

    .venv-ml/bin/python bench/train_memory_probe.py --method full --micro-batch 2 --seq-len 512 [--checkpointing]
    python3 bench/train_memory_probe.py --device cuda --precision bf16 --method lora --micro-batch 4 --seq-len 1024

Runs in the ML environment (torch, transformers, peft; nothing of the console). It builds a random-weight Llama
from a config (no download), trains it for a few steps in fp32 with AdamW on random token ids, and prints one
JSON line: the peak resident memory of the process (ru_maxrss) minus its resident memory right after the imports,
as the issue defines the figure ("peak minus post-import RSS"). Each configuration needs a fresh process: the
peak is per process.

On CUDA (`--device cuda`) the model is built on the GPU directly and the figure is torch.cuda.max_memory_allocated()
over the training steps (every tensor, weights included; the CUDA context is reported apart as `context_bytes`).
`--precision bf16` is the mixed precision the estimate assumes: trainable weights stay fp32 (the master copy; peft
keeps LoRA adapters in fp32 too), a LoRA base is frozen in bf16, forward and loss run under bf16 autocast, and
AdamW is the fused kernel transformers' Trainer picks. `--bf16-weights` stores the trainable weights in bf16
instead, as workers/jobs/finetune_train.py loads a model for a full fine-tune (AdamW's moments then are bf16 too).

The loop is what transformers' Trainer does per optimizer step (forward with labels, backward, AdamW step,
`zero_grad(set_to_none=True)`), without its data loader, so the measured memory is the model's own.

`--trainer sft` measures the fine-tune program itself instead of that loop: the model, tokenizer, datasets,
SFTConfig, LoRA config and TRL's SFTTrainer all come from workers/jobs/finetune_train.py (so the loss is TRL's
fused LM head, not `model(labels=...)`, and the precision is the program's choice: fp32 on CPU, bf16 on a GPU
that has it). The random Llama is saved once to `--model-dir` (by a child process, so the measured one never
builds it) with a word-level tokenizer whose vocabulary is the model's; the dataset is generated text rows of
exactly `--seq-len` tokens with TRL's end-of-sequence token, so every micro batch is b x seq-len tokens, as the
estimate assumes. The peak is taken as above (CPU: peak RSS minus post-import RSS, where the imports include TRL,
datasets and the program's module; CUDA: the largest per-step torch.cuda.max_memory_allocated()), over `--steps`
optimizer steps of `trainer.train()`, in the same JSON shape.

    .venv-ml/bin/python bench/train_memory_probe.py --trainer sft --method lora --micro-batch 4 --seq-len 1024
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--bf16-weights", action="store_true", help="trainable weights in bf16, no fp32 master copy")
    parser.add_argument(
        "--trainer",
        choices=("loop", "sft"),
        default="loop",
        help="loop: the model(labels=) loop above; sft: the fine-tune program's SFTTrainer (workers/jobs)",
    )
    parser.add_argument("--model-dir", help="sft: where the random model and tokenizer are saved (reused if there)")
    parser.add_argument("--lora-dropout", type=float, default=None, help="sft: default the program's (0.05)")
    parser.add_argument("--prepare-model", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare_model:
        _save_random_model(args)
        return
    if args.trainer == "sft":
        if args.precision != "fp32" or args.bf16_weights:
            parser.error("--trainer sft trains in the program's precision (fp32 on CPU, bf16 on a GPU that has it)")
        _probe_sft(args)
        return
    if args.device == "cpu" and args.precision != "fp32":
        parser.error("on CPU the probe trains in fp32 (as the fine-tune program does); bf16 needs --device cuda")
    if args.bf16_weights and args.precision != "bf16":
        parser.error("--bf16-weights needs --precision bf16")
    if args.device == "cuda":
        _probe_cuda(args)
        return

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


def _probe_cuda(args: argparse.Namespace) -> None:
    """The same loop on a CUDA GPU, measured with the caching allocator's own peak counter."""
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    if not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU; this host has none")
    torch.manual_seed(0)
    device = torch.device("cuda")
    baseline = torch.cuda.memory_allocated()
    config_dict = json.loads(args.config) if args.config else DEFAULT_CONFIG
    config = LlamaConfig(**{k: v for k, v in config_dict.items() if k != "model_type"})
    started = time.perf_counter()
    with device:
        model = LlamaForCausalLM(config)  # fp32 on the GPU: no host copy, no download
    params = sum(p.numel() for p in model.parameters())
    half = args.precision == "bf16" and (args.method == "lora" or args.bf16_weights)
    if half:
        model = model.to(torch.bfloat16)  # a frozen LoRA base, or --bf16-weights
    if args.method == "lora":
        targets = args.lora_targets.split(",")
        model = get_peft_model(model, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, target_modules=targets))
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()  # the fp32 build of a bf16 model is gone before the peak counter starts
    after_model = torch.cuda.memory_allocated()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, fused=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if args.precision == "bf16" else contextlib.nullcontext()
    generator = torch.Generator().manual_seed(0)
    losses, step_peaks, after_backward, after_step = [], [], [], []
    for _step in range(args.steps):
        torch.cuda.reset_peak_memory_stats()
        for _micro in range(args.accumulation):
            ids = torch.randint(0, config.vocab_size, (args.micro_batch, args.seq_len), generator=generator).to(device)
            with autocast:
                loss = model(input_ids=ids, labels=ids).loss / args.accumulation
            loss.backward()
            losses.append(round(float(loss.detach()), 4))
            del loss, ids
        after_backward.append(torch.cuda.memory_allocated())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        after_step.append(torch.cuda.memory_allocated())
        step_peaks.append(torch.cuda.max_memory_allocated())
    torch.cuda.synchronize()
    peak = max(step_peaks)
    free, total = torch.cuda.mem_get_info()
    # What the process holds on the device beyond the allocator's pool: context, cuBLAS and kernel images.
    context = total - free - torch.cuda.memory_reserved()
    properties = torch.cuda.get_device_properties(device)
    print(
        json.dumps(
            {
                "method": args.method,
                "precision": args.precision,
                "bf16_weights": bool(args.bf16_weights),
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
                "baseline_allocated_bytes": baseline,
                "after_model_allocated_bytes": after_model,
                "after_backward_allocated_bytes": after_backward,
                "after_step_allocated_bytes": after_step,
                "step_peak_allocated_bytes": step_peaks,
                "peak_allocated_bytes": peak,
                "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
                "context_bytes": context,
                "measured_bytes": peak - baseline,
                "losses": losses,
                "seconds": round(time.perf_counter() - started, 1),
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "device": f"{properties.name}, {round(properties.total_memory / 2**30)} GiB",
                "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
                "attention": model.config._attn_implementation,
            }
        ),
        flush=True,
    )


def _config_dict(args: argparse.Namespace) -> dict:
    return json.loads(args.config) if args.config else DEFAULT_CONFIG


def _save_random_model(args: argparse.Namespace) -> None:
    """The random-weight Llama (fp32 for a CPU, bf16 for CUDA, as the program will load it) and a word-level
    tokenizer of the same vocabulary: token `w<n>` is id n, the last id is the end-of-sequence token."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(0)
    config_dict = _config_dict(args)
    config = LlamaConfig(**{k: v for k, v in config_dict.items() if k != "model_type"})
    vocab = config.vocab_size
    config.eos_token_id = config.pad_token_id = vocab - 1
    config.bos_token_id = None
    cuda = args.device == "cuda"
    with torch.device("cuda" if cuda else "cpu"):
        model = LlamaForCausalLM(config)
    model = model.to(torch.bfloat16 if cuda else torch.float32)
    model.save_pretrained(args.model_dir)
    words = {f"w{n}": n for n in range(vocab - 1)} | {"</s>": vocab - 1}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="</s>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", pad_token="</s>")
    fast.save_pretrained(args.model_dir)


def _write_dataset(path: Path, rows: int, seq_len: int, vocab: int) -> None:
    """Text rows of seq_len - 1 random words: with TRL's end-of-sequence token, exactly seq_len tokens each."""
    import random

    generator = random.Random(0)
    with path.open("w") as handle:
        for _ in range(rows):
            text = " ".join(f"w{generator.randrange(vocab - 1)}" for _ in range(seq_len - 1))
            handle.write(json.dumps({"text": text}) + "\n")


def _probe_sft(args: argparse.Namespace) -> None:
    """A few optimizer steps of the fine-tune program's own SFTTrainer, measured as the loop is."""
    import subprocess

    work = Path(tempfile.mkdtemp(prefix="train-memory-sft-"))
    model_dir = Path(args.model_dir) if args.model_dir else work / "model"
    if not (model_dir / "config.json").is_file():
        command = [sys.executable, __file__, "--prepare-model", "--model-dir", str(model_dir), "--device", args.device]
        subprocess.run(command + (["--config", args.config] if args.config else []), check=True)

    sys.path.insert(0, str(ROOT))
    import datasets  # noqa: F401
    import peft
    import torch
    import transformers
    import trl
    from trl import SFTTrainer

    from workers.jobs import finetune_train as program
    from workers.jobs.finetune_data import scan_dataset
    from workers.jobs.finetune_spec import parse_spec
    from workers.jobs.protocol import Events

    cuda = args.device == "cuda"
    if cuda != torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: the program picks the device itself, and CUDA is {cuda=}")
    baseline = torch.cuda.memory_allocated() if cuda else _rss_bytes()
    config_dict = _config_dict(args)
    dataset = work / "train.jsonl"
    rows = args.micro_batch * args.accumulation * args.steps
    _write_dataset(dataset, rows, args.seq_len, config_dict["vocab_size"])
    hyper = {
        "max_steps": args.steps,
        "batch_size": args.micro_batch,
        "grad_accumulation": args.accumulation,
        "max_seq_len": args.seq_len,
        "lora_r": args.lora_r,
        "lora_alpha": 2 * args.lora_r,
        "target_modules": args.lora_targets.split(","),
    }
    if args.lora_dropout is not None:
        hyper["lora_dropout"] = args.lora_dropout
    raw = {"base_model": str(model_dir), "dataset": str(dataset), "output_dir": str(work / "job")}
    raw |= {"method": args.method, "gradient_checkpointing": args.checkpointing, "checkpoint_every": 10**6}
    spec = parse_spec(raw | {"hyperparameters": hyper})
    started = time.perf_counter()
    events = Events(sys.stderr)
    precision, dtype = program.choose_precision(spec, events)
    transformers.set_seed(spec.hyperparameters["seed"])
    tokenizer = program.load_tokenizer(spec)
    scan = scan_dataset(spec.dataset)
    program.check_lengths(spec, scan, tokenizer)  # rows fit max_seq_len exactly
    train_set, _ = program.build_datasets(spec, scan)
    model = program.load_model(spec, dtype)
    params = sum(p.numel() for p in model.parameters())
    steps = _step_memory(cuda)
    trainer = SFTTrainer(
        model=model,
        args=program.sft_config(spec, precision),
        train_dataset=train_set,
        processing_class=tokenizer,
        peft_config=program.lora_config(spec),
        callbacks=[steps],
    )
    trainer.remove_callback(transformers.PrinterCallback)
    after_model = torch.cuda.memory_allocated() if cuda else _rss_bytes()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    losses = [round(entry["loss"], 4) for entry in trainer.state.log_history if "loss" in entry]
    lengths = sorted({len(row["input_ids"]) for row in trainer.train_dataset})
    record = {
        "trainer": "sft",
        "method": args.method,
        "precision": precision,
        "micro_batch": args.micro_batch,
        "seq_len": args.seq_len,
        "accumulation": args.accumulation,
        "gradient_checkpointing": args.checkpointing,
        "steps": args.steps,
        "lora_r": args.lora_r if args.method == "lora" else None,
        "lora_targets": args.lora_targets.split(",") if args.method == "lora" else None,
        "lora_dropout": spec.hyperparameters["lora_dropout"] if args.method == "lora" else None,
        "row_tokens": lengths,
        "config": config_dict,
        "params": params,
        "trainable_params": trainable,
    }
    if cuda:
        torch.cuda.synchronize()
        peak = max(steps.peaks)
        free, total = torch.cuda.mem_get_info()
        context = total - free - torch.cuda.memory_reserved()
        properties = torch.cuda.get_device_properties(torch.device("cuda"))
        record |= {
            "baseline_allocated_bytes": baseline,
            "after_model_allocated_bytes": after_model,
            "after_backward_allocated_bytes": steps.after_backward,
            "after_step_allocated_bytes": steps.after_step,
            "step_peak_allocated_bytes": steps.peaks,
            "peak_allocated_bytes": peak,
            "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
            "context_bytes": context,
            "measured_bytes": peak - baseline,
        }
    else:
        peak = _peak_rss_bytes()
        record |= {
            "baseline_rss_bytes": baseline,
            "after_model_rss_bytes": after_model,
            "peak_rss_bytes": peak,
            "measured_bytes": peak - baseline,
        }
    record |= {
        "losses": losses,
        "seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
        "attention": trainer.model.config._attn_implementation,
    }
    if cuda:
        record |= {
            "cuda": torch.version.cuda,
            "device": f"{properties.name}, {round(properties.total_memory / 2**30)} GiB",
        }
    print(json.dumps(record), flush=True)


def _step_memory(cuda: bool):
    """A TrainerCallback (transformers is imported lazily) that records, per optimizer step on CUDA, the
    allocator's peak and what is allocated after the backward pass and after the step."""
    import torch
    from transformers import TrainerCallback

    class StepMemory(TrainerCallback):
        def __init__(self) -> None:
            self.peaks: list[int] = []
            self.after_backward: list[int] = []
            self.after_step: list[int] = []

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.reset_peak_memory_stats()

        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            if cuda:
                self.after_backward.append(torch.cuda.memory_allocated())

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                self.after_step.append(torch.cuda.memory_allocated())
                self.peaks.append(torch.cuda.max_memory_allocated())

    return StepMemory()


if __name__ == "__main__":
    main(sys.argv[1:])

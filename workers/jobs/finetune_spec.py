"""A fine-tune job's spec: fields, defaults and checks, standard library only, so the console can check a form
with the same rules the program applies. A wrong field is `BadInput(field=...)`.

    {
      "base_model": "/models/org--name/<commit>",       a model directory (config.json, weights, tokenizer)
      "dataset": "/data/train.jsonl",                   JSONL: chat `messages`, prompt/completion, or text
      "output_dir": "/jobs/finetune-7",                 checkpoints/ and the adapter/ or model/ go here
      "method": "lora" | "qlora" | "full",
      "precision": "auto" | "bf16" | "fp16" | "fp32",   auto: bf16 on a GPU that has it, fp16 on other GPUs,
                                                        fp32 on CPU (where every request becomes fp32)
      "gradient_checkpointing": false,
      "eval_fraction": 0.0, "eval_every": null,         a held-out share and its interval in steps
      "checkpoint_every": 100, "logging_every": 1,
      "resume_from": null | "latest" | "<checkpoint dir>",  latest: the newest complete checkpoint, else start
      "hyperparameters": {...}                          see HYPERPARAMETERS
    }

Data parallel: the spec has no process count. The launcher decides it (`workers.mlenv.distributed_job_command`,
one process per GPU, or N CPU processes) and `hyperparameters.batch_size` is the batch of each process, as
transformers' per_device_train_batch_size: the global batch is batch_size x grad_accumulation x processes. The
console divides the global batch a user asks for by the processes it places (16 on 2 GPUs: batch_size 8), and
the manifest's lineage records `processes`. With the same seed and data, N processes at batch_size B / N train
as one process at B: the same samples make each global step, and DDP averages over their tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from workers.jobs.protocol import BadInput

METHODS = ("lora", "qlora", "full")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")

# name: (type, default, check or None, what a valid value is)
HYPERPARAMETERS: dict[str, tuple[type | tuple, Any, Any, str]] = {
    "learning_rate": (float, 2e-4, lambda v: 0 < v < 1, "a number between 0 and 1"),
    "max_steps": (int, None, lambda v: v > 0, "a positive whole number (it overrides epochs)"),
    "epochs": (float, 1.0, lambda v: v > 0, "a positive number"),
    "batch_size": (int, 4, lambda v: 0 < v <= 4096, "a whole number from 1 to 4096"),
    "grad_accumulation": (int, 1, lambda v: 0 < v <= 4096, "a whole number from 1 to 4096"),
    "max_seq_len": (int, 1024, lambda v: 8 <= v <= 1_048_576, "a whole number from 8 up"),
    "packing": (bool, False, None, "true or false"),
    "lora_r": (int, 16, lambda v: 0 < v <= 1024, "a whole number from 1 to 1024"),
    "lora_alpha": (int, 32, lambda v: v > 0, "a positive whole number"),
    "lora_dropout": (float, 0.05, lambda v: 0 <= v < 1, "a number from 0 to below 1"),
    "target_modules": ((str, list), "all-linear", None, '"all-linear" or a list of module names'),
    # Whole modules trained and saved with the adapter (peft's modules_to_save), e.g. ["norm"].
    "modules_to_save": (list, None, None, "a list of module names"),
    "warmup_steps": (int, 0, lambda v: v >= 0, "zero or a positive whole number"),
    "warmup_ratio": (float, 0.0, lambda v: 0 <= v < 1, "a number from 0 to below 1"),
    "scheduler": (str, "linear", lambda v: v in SCHEDULERS, "one of " + ", ".join(SCHEDULERS)),
    "weight_decay": (float, 0.0, lambda v: 0 <= v < 1, "a number from 0 to below 1"),
    "max_grad_norm": (float, 1.0, lambda v: v >= 0, "zero (no clipping) or a positive number"),
    "seed": (int, 42, lambda v: 0 <= v < 2**32, "a whole number from 0 to 2**32 - 1"),
}
TOP_LEVEL = {
    "base_model": (str, None, None, "a model directory"),
    "dataset": (str, None, None, "a JSONL file"),
    "output_dir": (str, None, None, "a directory"),
    "method": (str, "lora", lambda v: v in METHODS, "one of " + ", ".join(METHODS)),
    "precision": (str, "auto", lambda v: v in PRECISIONS, "one of " + ", ".join(PRECISIONS)),
    "gradient_checkpointing": (bool, False, None, "true or false"),
    "eval_fraction": (float, 0.0, lambda v: 0 <= v < 0.5, "a number from 0 to below 0.5"),
    "eval_every": (int, None, lambda v: v > 0, "a positive whole number of steps"),
    "checkpoint_every": (int, 100, lambda v: v > 0, "a positive whole number of steps"),
    "logging_every": (int, 1, lambda v: v > 0, "a positive whole number of steps"),
    "resume_from": (str, None, None, '"latest" or a checkpoint directory'),
}
REQUIRED = ("base_model", "dataset", "output_dir")
# A model directory needs one of these to tokenize the data (the console checks it before starting a run too).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclass(frozen=True)
class FinetuneSpec:
    """A checked spec; `hyperparameters` holds every name of HYPERPARAMETERS."""

    base_model: str
    dataset: str
    output_dir: str
    method: str = "lora"
    precision: str = "auto"
    gradient_checkpointing: bool = False
    eval_fraction: float = 0.0
    eval_every: int | None = None
    checkpoint_every: int = 100
    logging_every: int = 1
    resume_from: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (*TOP_LEVEL, "hyperparameters")}


def _value(name: str, raw: Any, rule: tuple, prefix: str = "") -> Any:
    kind, default, check, valid = rule
    if raw is None:
        return default
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(raw, int) and not isinstance(raw, bool):
        raw = float(raw)  # 1 is a fine learning rate spelling
    if not isinstance(raw, kinds) or (isinstance(raw, bool) and bool not in kinds):
        raise BadInput(f"{prefix}{name} must be {valid}.", field=f"{prefix}{name}")
    if isinstance(raw, list) and not all(isinstance(item, str) and item for item in raw):
        raise BadInput(f"{prefix}{name} must be {valid}.", field=f"{prefix}{name}")
    if check is not None and not check(raw):
        raise BadInput(f"{prefix}{name} must be {valid}.", field=f"{prefix}{name}")
    return raw


def parse_spec(raw: dict[str, Any]) -> FinetuneSpec:
    """The checked spec with defaults filled in; BadInput naming the first wrong field."""
    unknown = sorted(set(raw) - set(TOP_LEVEL) - {"hyperparameters"})
    if unknown:
        raise BadInput(f"Unknown spec field {unknown[0]}.", field=unknown[0])
    for name in REQUIRED:
        if not raw.get(name):
            raise BadInput(f"{name} is required: {TOP_LEVEL[name][3]}.", field=name)
    hyper_raw = raw.get("hyperparameters") or {}
    if not isinstance(hyper_raw, dict):
        raise BadInput("hyperparameters must be an object.", field="hyperparameters")
    unknown = sorted(set(hyper_raw) - set(HYPERPARAMETERS))
    if unknown:
        raise BadInput(f"Unknown hyperparameter {unknown[0]}.", field=f"hyperparameters.{unknown[0]}")
    top = {name: _value(name, raw.get(name), rule) for name, rule in TOP_LEVEL.items()}
    hyper = {
        name: _value(name, hyper_raw.get(name), rule, "hyperparameters.") for name, rule in HYPERPARAMETERS.items()
    }
    if top["eval_fraction"] and top["eval_every"] is None:
        top["eval_every"] = top["checkpoint_every"]
    return FinetuneSpec(**top, hyperparameters=hyper)

"""Fine-tune a causal language model (LoRA, QLoRA on CUDA, or full) with TRL's SFTTrainer.

    python -m workers.jobs.finetune --spec FILE

The spec is described in workers/jobs/finetune_spec.py; events, stopping and exit codes in
workers/jobs/protocol.py. Output under spec.output_dir: checkpoints/checkpoint-N (each with manifest.json,
written last) and, on success, adapter/ (LoRA, QLoRA) or model/ (full), with its manifest and lineage.
SIGTERM saves a checkpoint at the next step boundary and exits 3; `"resume_from": "latest"` continues from
the newest complete checkpoint with the step count, optimizer, scheduler, RNG state and data order intact.
Runs in the ML environment; imports nothing from Django. The spec and the data are checked before torch loads.
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from workers.jobs.finetune_data import scan_dataset
from workers.jobs.finetune_spec import TOKENIZER_FILES, FinetuneSpec, parse_spec
from workers.jobs.manifest import sha256_file
from workers.jobs.protocol import BadInput, Events, StopRequest, run_program

PROGRAM_VERSION = "1"


def check_base_model(spec: FinetuneSpec) -> None:
    base = Path(spec.base_model)
    if not (base / "config.json").is_file():
        raise BadInput(f"{base} is not a model directory (no config.json).", cause="bad_base_model", field="base_model")
    if not any((base / name).is_file() for name in TOKENIZER_FILES):
        raise BadInput(
            f"The base model at {base} has no tokenizer files.",
            cause="no_tokenizer",
            field="base_model",
            next_step="Choose a model repository that ships its tokenizer.",
        )


def versions() -> dict[str, str]:
    found = {"program": f"finetune/{PROGRAM_VERSION}"}
    for package in ("torch", "transformers", "peft", "trl", "accelerate", "datasets"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def run(raw: dict[str, Any], events: Events, stop: StopRequest) -> None:
    spec = parse_spec(raw)
    check_base_model(spec)
    scan = scan_dataset(spec.dataset)
    events.log(f"Dataset: {scan.rows} {scan.shape} records, {scan.bytes} bytes.")
    lineage = {
        "base_model": spec.base_model,
        "dataset_sha256": sha256_file(spec.dataset),
        "dataset_shape": scan.shape,
        "dataset_rows": scan.rows,
        "method": spec.method,
        "hyperparameters": spec.hyperparameters,
        "gradient_checkpointing": spec.gradient_checkpointing,
        "versions": versions(),
    }
    from workers.jobs.finetune_train import train  # torch, transformers, trl: after the cheap checks

    train(spec, scan, events, stop, lineage)


def main(argv: list[str] | None = None) -> int:
    return run_program(run, argv, prog="python -m workers.jobs.finetune")


if __name__ == "__main__":
    sys.exit(main())

"""Merge a LoRA adapter into its base model and write a full model directory.

    python -m workers.jobs.merge --spec FILE

    {"base_model": DIR, "adapter": DIR, "output_dir": DIR, "precision": "auto" | "bf16" | "fp16" | "fp32"}

auto keeps the base model's own dtype. output_dir must not exist yet: the model is written beside it and renamed
into place with its manifest, so a half-merged model is never visible. Events and exit codes as in protocol.py.
Runs in the ML environment; imports nothing from Django.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from workers.jobs.manifest import read_manifest, write_manifest
from workers.jobs.protocol import BadInput, Events, StopRequest, run_program

FIELDS = {"base_model", "adapter", "output_dir", "precision"}
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def check(raw: dict[str, Any]) -> tuple[Path, Path, Path, str]:
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise BadInput(f"Unknown spec field {unknown[0]}.", field=unknown[0])
    for name in ("base_model", "adapter", "output_dir"):
        if not isinstance(raw.get(name), str) or not raw[name]:
            raise BadInput(f"{name} is required: a directory.", field=name)
    precision = raw.get("precision") or "auto"
    if precision not in PRECISIONS:
        raise BadInput(f"precision must be one of {', '.join(PRECISIONS)}.", field="precision")
    base, adapter, output = Path(raw["base_model"]), Path(raw["adapter"]), Path(raw["output_dir"])
    if not (base / "config.json").is_file():
        raise BadInput(f"{base} is not a model directory (no config.json).", cause="bad_base_model", field="base_model")
    if not (adapter / "adapter_config.json").is_file():
        raise BadInput(f"{adapter} is not a LoRA adapter (no adapter_config.json).", field="adapter")
    if output.exists():
        raise BadInput(f"{output} already exists; merge into a new directory.", field="output_dir")
    return base, adapter, output, precision


def run(raw: dict[str, Any], events: Events, stop: StopRequest) -> None:
    base, adapter, output, precision = check(raw)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    dtypes = {"auto": "auto", "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtypes[precision])
    events.log(f"Merging {adapter.name} into {base.name}.")
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(partial, safe_serialization=True)
    # The adapter's tokenizer is the one it was trained with (a chat template may have been set).
    tokenizer_source = adapter if any(adapter.glob("tokenizer*")) else base
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(partial)
    lineage = {
        "base_model": str(base),
        "adapter": str(adapter),
        "adapter_lineage": (read_manifest(adapter) or {}).get("lineage"),
    }
    manifest = write_manifest(partial, step=(read_manifest(adapter) or {}).get("step", 0), lineage=lineage)
    os.replace(partial, output)
    events.result(
        kind="full_model", path=str(output), files=len(manifest["files"]), seconds=round(time.monotonic() - started, 3)
    )


def main(argv: list[str] | None = None) -> int:
    return run_program(run, argv, prog="python -m workers.jobs.merge")


if __name__ == "__main__":
    sys.exit(main())

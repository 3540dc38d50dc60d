"""Quantize a full-precision model with llm-compressor and write a compressed-tensors model directory.

    python -m workers.jobs.quantize --spec FILE        (the spec: workers/jobs/quantize_spec.py)

Phases: check the spec, the source and the calibration file (bad input exits 2 before torch loads); load the
model; tokenize the calibration rows; run the recipe (`llmcompressor.oneshot`, not interruptible); save it
compressed with the tokenizer and a manifest into `<output_dir>.partial`, then rename that to output_dir, so a
killed run never leaves a half model at output_dir (a rerun removes the stale .partial). A stop request is
honoured between phases: exit EXIT_STOPPED with nothing at output_dir. Calibration rows are never logged.
Events and exit codes as in protocol.py. Runs in the ML environment; imports nothing from Django.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.jobs.finetune_data import iter_records, scan_dataset
from workers.jobs.manifest import sha256_file, write_manifest
from workers.jobs.protocol import BadInput, Events, Stopped, StopRequest, run_program
from workers.jobs.quantize_recipe import recipe
from workers.jobs.quantize_spec import (
    QuantizeSpec,
    calibration_path,
    calibration_rows_needed,
    check_source_config,
    group_size_problem,
    parse_spec,
)

PHASES = 4  # load, calibration data, quantize, save
# Copied verbatim from the source: the served model tokenizes exactly as the source did.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
VERSIONED = ("llmcompressor", "compressed-tensors", "transformers", "torch")


@dataclass(frozen=True)
class Plan:
    spec: QuantizeSpec
    source: Path
    output: Path
    calibration: Path | None  # None: the scheme reads no calibration data
    calibration_shape: str | None
    calibration_rows: int


def check(raw: dict[str, Any]) -> Plan:
    """Everything that can be told without torch: BadInput naming the field."""
    spec = parse_spec(raw)
    source, output = Path(spec.source_model), Path(spec.output_dir)
    try:
        config = json.loads((source / "config.json").read_text())
    except OSError as exc:
        raise BadInput(f"{source} is not a model directory (no config.json).", field="source_model") from exc
    except ValueError as exc:
        raise BadInput(f"{source}/config.json is not valid JSON: {exc}.", field="source_model") from exc
    check_source_config(config)
    if not list(source.glob("*.safetensors")):
        raise BadInput(f"{source} has no safetensors weights.", field="source_model")
    problem = group_size_problem(config, spec.group_size)
    if problem:
        raise BadInput(problem, field="group_size")
    if output.exists():
        raise BadInput(f"{output} already exists; quantize into a new directory.", field="output_dir")
    needed = calibration_rows_needed(spec)
    if not needed:
        return Plan(spec, source, output, None, None, 0)
    path = calibration_path(spec)
    try:
        scan = scan_dataset(path)
    except BadInput as exc:
        raise BadInput(exc.message, cause=exc.cause, line=exc.line, field="calibration.path") from exc
    if scan.rows < needed:
        raise BadInput(
            f"{path.name} has {scan.rows} calibration rows and the spec asks for {needed} samples.",
            cause="too_few_rows",
            field="calibration.samples",
            next_step=f"Ask for at most {scan.rows} samples, or calibrate with a longer file.",
        )
    return Plan(spec, source, output, path, scan.shape, scan.rows)


def calibration_texts(plan: Plan, tokenizer) -> list[str]:
    """`samples` rows drawn with the spec's seed, in file order, as the text the model reads."""
    chosen = set(random.Random(plan.spec.seed).sample(range(plan.calibration_rows), plan.spec.calibration.samples))
    texts = []
    for index, record in enumerate(iter_records(str(plan.calibration), plan.calibration_shape)):
        if index not in chosen:
            continue
        if plan.calibration_shape == "chat":
            if tokenizer.chat_template:
                texts.append(tokenizer.apply_chat_template(record["messages"], tokenize=False))
            else:
                texts.append("\n".join(message["content"] for message in record["messages"]))
        elif plan.calibration_shape == "prompt_completion":
            texts.append(record["prompt"] + record["completion"])
        else:
            texts.append(record["text"])
    return texts


def _checkpoint(stop: StopRequest, events: Events, partial: Path, phase: str) -> None:
    if stop.requested:
        shutil.rmtree(partial, ignore_errors=True)
        events.log(f"Stopped on request before {phase}; nothing was written.", level="warning")
        raise Stopped


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = ""
    return found


def run(raw: dict[str, Any], events: Events, stop: StopRequest) -> None:
    plan = check(raw)
    spec = plan.spec
    if spec.device == "cpu":
        # llm-compressor moves each layer to any accelerator it sees; a CPU job must not touch a GPU.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    if spec.device == "cuda" and not torch.cuda.is_available():
        raise BadInput("device is cuda but no CUDA device is available here.", field="device")
    import yaml
    from datasets import Dataset
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    partial = plan.output.with_name(plan.output.name + ".partial")
    if partial.exists():
        events.log(f"Removing {partial.name} left by an earlier run.")
        shutil.rmtree(partial)
    torch.manual_seed(spec.seed)
    recipe_text = yaml.safe_dump(recipe(spec), sort_keys=False)

    events.log(f"Loading {plan.source}.")
    model = AutoModelForCausalLM.from_pretrained(plan.source, dtype="auto")
    tokenizer = AutoTokenizer.from_pretrained(plan.source)
    events.progress(1, PHASES, phase="load")
    _checkpoint(stop, events, partial, "reading the calibration data")

    dataset, calibration_sha256 = None, None
    if plan.calibration is not None:
        events.log(
            f"Tokenizing {spec.calibration.samples} of {plan.calibration_rows} calibration rows from "
            f"{plan.calibration.name} to at most {spec.calibration.seq_len} tokens."
        )
        calibration_sha256 = sha256_file(plan.calibration)
        texts = calibration_texts(plan, tokenizer)
        # A chat template writes its own BOS token; the tokenizer adds one to the other shapes.
        special = plan.calibration_shape != "chat" or not tokenizer.chat_template
        encoded = tokenizer(texts, truncation=True, max_length=spec.calibration.seq_len, add_special_tokens=special)
        dataset = Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})
    events.progress(2, PHASES, phase="calibration")
    _checkpoint(stop, events, partial, "quantizing")

    events.log(f"Quantizing with {spec.scheme} on {spec.device}.")
    arguments: dict[str, Any] = {"model": model, "recipe": recipe_text}
    if dataset is not None:
        arguments |= {
            "dataset": dataset,
            "num_calibration_samples": len(dataset),
            "max_seq_length": spec.calibration.seq_len,
            "shuffle_calibration_samples": False,
        }
    try:
        oneshot(**arguments)
    except ValueError as exc:
        if "divisible by group_size" in str(exc):  # a layer check_source could not foresee from config.json
            raise BadInput(str(exc).split(". ")[0] + ".", field="group_size") from exc
        raise
    events.progress(3, PHASES, phase="quantize")
    _checkpoint(stop, events, partial, "saving")

    events.log(f"Saving the compressed model to {plan.output}.")
    model.save_pretrained(partial, save_compressed=True)
    copied = [name for name in TOKENIZER_FILES if (plan.source / name).is_file()]
    for name in copied:
        shutil.copy2(plan.source / name, partial / name)
    if not copied:
        tokenizer.save_pretrained(partial)
    lineage = {
        "source_model": str(plan.source),
        "scheme": spec.scheme,
        "spec": spec.to_dict(),
        "calibration_sha256": calibration_sha256,
    }
    manifest = write_manifest(partial, step=0, lineage=lineage)
    _checkpoint(stop, events, partial, "publishing the model")
    os.replace(partial, plan.output)
    events.progress(4, PHASES, phase="save")
    if spec.device == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    events.result(
        kind="quantized_model",
        path=str(plan.output),
        scheme=spec.scheme,
        recipe=recipe_text,
        versions=_versions(),
        seconds=round(time.monotonic() - started, 3),
        peak_memory_bytes=peak,
        calibration_samples=len(dataset) if dataset is not None else 0,
        calibration_sha256=calibration_sha256,
        files=len(manifest["files"]),
    )


def main(argv: list[str] | None = None) -> int:
    return run_program(run, argv, prog="python -m workers.jobs.quantize")


if __name__ == "__main__":
    sys.exit(main())

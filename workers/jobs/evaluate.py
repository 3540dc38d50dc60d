"""Evaluate one or more model artifacts on the same held-out data: perplexity and task accuracy, comparable
between artifacts and between runs.

    python -m workers.jobs.evaluate --spec FILE

The spec is described in workers/jobs/evaluate_spec.py; events, stopping and exit codes in
workers/jobs/protocol.py. The spec, the model directories and the data are checked before torch loads.

Perplexity: the text is tokenized once, with the first model's tokenizer; every model is scored on those very
token ids (a model whose tokenizer gives other ids is refused: perplexities over different tokens do not compare),
with the same sliding windows (evaluate_scoring.windows). The result carries the ids' sha256, so a later run
can tell it scored the same tokens. Task: multiple_choice picks the choice with the highest total log-likelihood
given the prompt; exact_match compares the greedy answer with the expected text, both stripped of whitespace.

Events: a progress event after each batch (at most one a second), a metric event per model
{"step", "model", figures...}, then the result {"models": {id: figures}, "perplexity_data", "task", "versions"}.
No event and no log line holds the data's text (prompts, answers, generations): only counts and figures. SIGTERM
stops between batches with EXIT_STOPPED; nothing is written. Runs in the ML environment; imports nothing from
Django.
"""

from __future__ import annotations

import gc
import json
import math
import platform
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from workers.jobs.evaluate_data import (
    Example,
    check_models,
    read_examples,
    read_perplexity_text,
    token_ids_sha256,
)
from workers.jobs.evaluate_spec import EvaluateSpec, ModelRef, parse_spec
from workers.jobs.manifest import sha256_file
from workers.jobs.protocol import BadInput, Events, JobFailed, Stopped, StopRequest, run_program

PROGRAM_VERSION = "1"
PROGRESS_EVERY_S = 1.0


def versions() -> dict[str, str]:
    found = {"program": f"evaluate/{PROGRAM_VERSION}", "python": platform.python_version()}
    for package in ("torch", "transformers", "compressed-tensors"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


# -- loading ----------------------------------------------------------------------------------------------------
def torch_dtype_name(model: ModelRef, device: str, dtype: str) -> str:
    """auto: fp32 on CPU, the checkpoint's own dtype on a GPU."""
    names = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
    if dtype in names:
        return names[dtype]
    if device == "cpu":
        return "float32"
    config = json.loads((Path(model.path) / "config.json").read_text(encoding="utf-8"))
    named = str(config.get("dtype") or config.get("torch_dtype") or "float32").replace("torch.", "")
    return named if named in names.values() else "float32"


def load_model(model: ModelRef, device: str, dtype: str):
    """The model on `device` in eval mode, loaded as the development servers load it (serve_model.load_model):
    a compressed-tensors checkpoint on CPU is decompressed to dense weights (CPUs have no FP8 or int4 kernels)."""
    import torch

    from workers.jobs.serve_model import LoadError
    from workers.jobs.serve_model import load_model as load_for_serving

    threads = torch.get_num_threads()
    try:
        loaded, _tokenizer = load_for_serving(
            Path(model.path), device, torch_dtype_name(model, device, dtype), trust_remote_code=False
        )
    except LoadError as exc:
        oom = exc.reason in ("oom", "warmup_oom")
        raise JobFailed(
            f"{model.id} could not be loaded: {exc.message}",
            cause="out_of_memory" if oom else "model_load",
            next_step="Evaluate on a device with more memory, or in bf16." if oom else "Check the artifact's files.",
        ) from exc
    finally:
        # A server leaves a core to its HTTP side; an evaluation has none: keep every thread it had.
        torch.set_num_threads(threads)
    return loaded


def load_tokenizer(model: ModelRef):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model.path)


def release(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


# -- the run ------------------------------------------------------------------------------------------------------
class Progress:
    """Progress over all models and phases, at most one event a second (and the last), and the stop check."""

    def __init__(self, events: Events, stop: StopRequest, total: int) -> None:
        self.events, self.stop, self.total, self.done, self._last = events, stop, total, 0, 0.0

    def between(self, model_id: str, phase: str):
        def tick(_batches: int) -> None:
            self.done += 1
            now = time.monotonic()
            if now - self._last >= PROGRESS_EVERY_S or self.done == self.total:
                self._last = now
                self.events.progress(self.done, self.total, model=model_id, phase=phase)
            if self.stop.requested:
                self.events.log(f"Stopped on request after {self.done} of {self.total} batches; nothing was saved.")
                raise Stopped

        return tick


def perplexity_ids(spec: EvaluateSpec, text: str, tokenizers: list) -> list[int]:
    """The token ids every model is scored on: the first model's tokenization, which the others must match."""
    limit = spec.perplexity.max_tokens
    ids = tokenizers[0](text, add_special_tokens=True)["input_ids"][:limit]
    for index, tokenizer in enumerate(tokenizers[1:], start=1):
        if tokenizer(text, add_special_tokens=True)["input_ids"][:limit] != ids:
            first, other = spec.models[0].id, spec.models[index].id
            raise BadInput(
                f"{other} tokenizes the perplexity data differently from {first}: models must share a tokenizer "
                "for their perplexities to be compared.",
                cause="tokenizer_mismatch",
                field=f"models[{index}].path",
                next_step="Evaluate models of one family (a base model and its fine-tunes or quantizations) together.",
            )
    if len(ids) < 2:
        raise BadInput("The perplexity data is shorter than 2 tokens.", field="perplexity.path")
    return ids


def task_inputs(spec: EvaluateSpec, tokenizer, examples: list[Example]):
    """Token ids per example: (prompt, [choice ids, ...]) for multiple choice, the prompt for exact match."""
    prompts = [tokenizer(example.prompt, add_special_tokens=True)["input_ids"] for example in examples]
    if spec.task.kind == "exact_match":
        return prompts
    inputs = []
    for number, (prompt, example) in enumerate(zip(prompts, examples, strict=True), start=1):
        choices = [tokenizer(choice, add_special_tokens=False)["input_ids"] for choice in example.choices]
        if not prompt or not all(choices):
            # Nothing to condition on, or nothing to score: a log-likelihood of no tokens is no answer.
            raise BadInput(
                f"Example {number}: its prompt or one of its choices tokenizes to no tokens.",
                cause="bad_record",
                field="task.path",
            )
        inputs.append((prompt, choices))
    return inputs


def _batches(count: int, size: int) -> int:
    return -(-count // size)


def evaluate_task(spec, model, tokenizer, examples, inputs, between) -> dict[str, Any]:
    from workers.jobs.evaluate_scoring import choice_loglikelihoods, greedy_answers

    started = time.perf_counter()
    if spec.task.kind == "exact_match":
        answers = greedy_answers(
            model, tokenizer, inputs, spec.task.max_new_tokens, spec.batch_size, spec.device, between
        )
        correct = sum(a.strip() == str(e.expected).strip() for a, e in zip(answers, examples, strict=True))
    else:
        sequences = [(prompt, choice) for prompt, choices in inputs for choice in choices]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
        scores = iter(choice_loglikelihoods(model, sequences, spec.batch_size, spec.device, pad, between))
        correct = 0
        for example in examples:
            mine = [next(scores) for _ in example.choices]
            correct += max(range(len(mine)), key=mine.__getitem__) == example.expected
    seconds = time.perf_counter() - started
    return {
        "accuracy": correct / len(examples),
        "correct": correct,
        "examples": len(examples),
        "task_seconds": round(seconds, 3),
    }


def run(raw: dict[str, Any], events: Events, stop: StopRequest) -> None:
    spec = parse_spec(raw)
    check_models(spec)
    examples = read_examples(spec.task) if spec.task else []
    text, _name, ppl_rows = read_perplexity_text(spec.perplexity) if spec.perplexity else ("", "", None)

    import torch  # after the cheap checks
    from transformers.utils import logging as hf_logging

    from workers.jobs.evaluate_scoring import perplexity, windows
    from workers.jobs.serve_model import compressed_tensors_format

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()  # "sequence longer than the model": the windows take care of that
    if spec.device == "cuda" and not torch.cuda.is_available():
        raise BadInput("device cuda was asked for, but this machine has no usable GPU.", field="device")

    tokenizers = [load_tokenizer(model) for model in spec.models]
    ids: list[int] = []
    data: dict[str, Any] | None = None
    if spec.perplexity:
        ids = perplexity_ids(spec, text, tokenizers)
        p = spec.perplexity
        data = {
            "tokens": len(ids),
            "scored_tokens": len(ids) - 1,
            "sha256": token_ids_sha256(ids),
            "context_length": p.context_length,
            "stride": p.stride,
            "max_tokens": p.max_tokens,
            "source": p.path or "shipped:eval_sample.txt",
            "file_sha256": sha256_file(p.data_path()),
            # Rows read (up to max_tokens' worth), of the fine-tune's eval split when `split` is set; None: plain text.
            "rows": ppl_rows,
            "split": asdict(p.split) if p.split else None,
        }
        where = p.data_path().name
        if ppl_rows is not None:
            where = f"{ppl_rows} rows{' of the fine-tune eval split' if p.split else ''} of {where}"
        events.log(f"Perplexity data: {len(ids)} tokens from {where} (sha256 {data['sha256'][:12]}).")
    task: dict[str, Any] | None = None
    if spec.task:
        task = {
            "kind": spec.task.kind,
            "examples": len(examples),
            "sha256": sha256_file(spec.task.path),
            "split": asdict(spec.task.split) if spec.task.split else None,
        }
        events.log(f"Task: {len(examples)} {spec.task.kind} examples from {Path(spec.task.path).name}.")
    # Each model's own token ids for the examples (accuracy compares across tokenizers), checked before any loads.
    task_sets = [task_inputs(spec, tokenizer, examples) if spec.task else [] for tokenizer in tokenizers]

    per_model = 0
    if spec.perplexity:
        per_model += _batches(
            len(windows(len(ids), spec.perplexity.context_length, spec.perplexity.stride)), spec.batch_size
        )
    if spec.task:
        rows = len(examples) if spec.task.kind == "exact_match" else sum(len(e.choices) for e in examples)
        per_model += _batches(rows, spec.batch_size)
    progress = Progress(events, stop, per_model * len(spec.models))

    results: dict[str, dict[str, Any]] = {}
    for step, (ref, tokenizer, inputs) in enumerate(zip(spec.models, tokenizers, task_sets, strict=True), start=1):
        packed = compressed_tensors_format(json.loads((Path(ref.path) / "config.json").read_text(encoding="utf-8")))
        how = f", compressed-tensors {packed}" + (", decompressed for the CPU" if spec.device == "cpu" else "")
        events.log(f"Loading {ref.id} ({step} of {len(spec.models)}{how if packed else ''}).")
        started = time.perf_counter()
        model = load_model(ref, spec.device, spec.dtype)
        figures: dict[str, Any] = {
            "load_seconds": round(time.perf_counter() - started, 3),
            "dtype": str(model.dtype).replace("torch.", ""),
            "parameters": sum(p.numel() for p in model.parameters()),
            "compressed_tensors": packed,
        }
        if spec.perplexity:
            p = spec.perplexity
            scored = perplexity(
                model,
                ids,
                p.context_length,
                p.stride,
                spec.batch_size,
                spec.device,
                progress.between(ref.id, "perplexity"),
            )
            figures |= {
                "perplexity": math.exp(scored.nll) if scored.nll < 700 else None,  # exp overflows past ~709
                "nll": scored.nll,
                "tokens": scored.tokens,
                "seconds": round(scored.seconds, 3),
                "tokens_per_second": round(scored.tokens / scored.seconds, 1) if scored.seconds else None,
            }
        if spec.task:
            figures |= evaluate_task(spec, model, tokenizer, examples, inputs, progress.between(ref.id, "task"))
        events.metric(step=step, model=ref.id, **figures)
        results[ref.id] = figures
        del model
        release(spec.device)

    events.result(
        models=results,
        perplexity_data=data,
        task=task,
        device=spec.device,
        dtype=spec.dtype,
        batch_size=spec.batch_size,
        versions=versions(),
    )


def main(argv: list[str] | None = None) -> int:
    return run_program(run, argv, prog="python -m workers.jobs.evaluate")


if __name__ == "__main__":
    sys.exit(main())

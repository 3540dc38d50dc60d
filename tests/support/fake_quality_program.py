"""A stand-in for workers/jobs/quantize.py and evaluate.py in handler tests (no ML libraries, a second or less):
run as ML_PYTHON through a wrapper, it receives `-m workers.jobs.<kind> --spec FILE` and answers under the
job-program contract with what the real program reports. It copies the spec it was given to
<work dir>-last-spec.json beside its work directory (which the handler removes when the job ends), so a test can
check what the handler passed.

Quantize: writes output_dir as the real program does (a .partial directory, manifest last, renamed); with
FAKE_QUANTIZE_DIE=1 in its environment it writes half the .partial and kills itself, as the kernel's OOM
killer would; with FAKE_QUANTIZE_WAIT=1 it waits for a stop request (SIGTERM) and exits as stopped.
Evaluate: a perplexity per model (its index + 10) and an accuracy (0.5)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from workers.jobs.manifest import sha256_file, write_manifest
from workers.jobs.protocol import Stopped, run_program

DATA_SHA256 = "d" * 64


def quantize(spec: dict, events, stop) -> None:
    out = Path(spec["output_dir"])
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    source = Path(spec["source_model"])
    config = json.loads((source / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "pack-quantized"}
    (partial / "config.json").write_text(json.dumps(config))
    if os.environ.get("FAKE_QUANTIZE_WAIT"):
        events.log("quantizing: waiting for a stop request")
        deadline = time.monotonic() + 30
        while not stop.requested and time.monotonic() < deadline:
            time.sleep(0.05)
        raise Stopped
    if os.environ.get("FAKE_QUANTIZE_DIE"):
        events.progress(1, 2)
        os.kill(os.getpid(), signal.SIGKILL)
    (partial / "model.safetensors").write_bytes(b"\0" * 64)
    calibration = spec["calibration"]["path"]
    write_manifest(partial, step=0, lineage={"scheme": spec["scheme"]})
    os.replace(partial, out)
    events.progress(2, 2)
    events.result(
        kind="quantized_model",
        path=str(out),
        scheme=spec["scheme"],
        recipe="quant_stage:\n  quant_modifiers: {}\n",
        versions={"llmcompressor": "fake"},
        seconds=0.5,
        peak_memory_bytes=12345,
        calibration_samples=spec["calibration"]["samples"],
        calibration_sha256=sha256_file(calibration) if calibration else DATA_SHA256,
    )


def evaluate(spec: dict, events, stop) -> None:
    models = {}
    for index, model in enumerate(spec["models"]):
        figures = {"perplexity": 10.0 + index, "tokens": 1000, "tokens_per_second": 500.0}
        if spec.get("task"):
            figures.update({"accuracy": 0.5, "examples": 4})
        events.metric(step=index, model=model["id"], perplexity=figures["perplexity"])
        models[model["id"]] = figures
    ppl = spec.get("perplexity") or {}
    events.result(
        models=models,
        perplexity_data={
            "tokens": 1000,
            "sha256": "f" * 64,  # of the token ids
            "file_sha256": DATA_SHA256,
            "context_length": ppl.get("context_length"),
            "stride": ppl.get("stride"),
            "split": ppl.get("split"),  # the real program reports the fine-tune eval split it scored
        },
        task={"kind": spec["task"]["kind"], "sha256": "e" * 64, "examples": 4, "split": spec["task"].get("split")}
        if spec.get("task")
        else None,
        versions={"transformers": "fake"},
    )


def main(argv: list[str]) -> int:
    # argv: -m workers.jobs.<kind> --spec FILE
    kind = argv[1].rsplit(".", 1)[-1]
    rest = argv[2:]
    spec_file = Path(rest[rest.index("--spec") + 1])
    shutil.copy(spec_file, spec_file.parent.parent / f"{spec_file.parent.name}-last-spec.json")
    return run_program({"quantize": quantize, "evaluate": evaluate}[kind], rest, prog=kind)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The planner on what the quantize job program writes: workers/jobs/quantize.py (llm-compressor, in the ML
environment) quantizes the tiny model with W4A16_GPTQ and FP8_DYNAMIC, and the planner's weight memory, counted from
config.json alone, is within 5 % of what the safetensors tensors take (read from their headers). The GPTQ output is
then served by serve.py with the command a TGI spec gets for it (`--quantize compressed-tensors`).

Timings on 2 shared cores: the tiny model ~5 s, each quantize run ~6 s, the serve ~6 s."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest

from deployments.sizing import ModelMetadata, load_model_metadata, size_model
from tests.conftest import need
from tests.support.job_program import run_job
from tests.support.serve_process import ServeProcess, make_model, ml_python
from workers.jobs.protocol import EXIT_OK
from workers.jobs.serve import StartupError, check_quantize

# Bytes per element of the safetensors dtypes these checkpoints hold.
DTYPE_BYTES = {"F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "F8_E4M3": 1}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run the quantize program")
    root = tmp_path_factory.mktemp("quantize-sizing")
    make_model(root / "tiny")
    rows = [{"text": f"row {index}: the console deploys a model and serves it."} for index in range(16)]
    (root / "calibration.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


@pytest.fixture(scope="module")
def outputs(work) -> dict[str, Path]:
    """Each scheme's model directory. The tiny model's widths (64, 176) take no group of 32 or more: GPTQ runs with
    one scale per output channel (group_size -1)."""
    calibration = {"path": str(work / "calibration.jsonl"), "samples": 8, "seq_len": 32}
    made = {}
    for scheme in ("W4A16_GPTQ", "FP8_DYNAMIC"):
        spec = {
            "source_model": str(work / "tiny"),
            "output_dir": str(work / scheme),
            "scheme": scheme,
            "group_size": -1,
            "calibration": calibration if scheme == "W4A16_GPTQ" else None,
        }
        run = run_job("quantize", spec, work / f"{scheme}-run")
        assert run.code == EXIT_OK, (run.events[-3:], run.stderr[-3000:])
        made[scheme] = Path(run.one("result")["path"])
    return made


def tensor_bytes(directory: Path) -> int:
    """What the safetensors files' tensors take: each header (8-byte little-endian length, then JSON) gives every
    tensor's dtype and shape."""
    total = 0
    for path in directory.glob("*.safetensors"):
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, info in header.items():
            if name != "__metadata__":
                total += DTYPE_BYTES[info["dtype"]] * math.prod(info["shape"])
    return total


@pytest.mark.parametrize("scheme", ["W4A16_GPTQ", "FP8_DYNAMIC"])
def test_planned_weight_memory_is_within_5_percent_of_the_tensors(outputs, work, scheme):
    directory = outputs[scheme]
    stored = tensor_bytes(directory)
    config = json.loads((directory / "config.json").read_text())
    planned = size_model(ModelMetadata(config=config))
    assert planned.as_dict()["quantize"] == "compressed-tensors"
    assert abs(planned.weight_bytes - stored) <= 0.05 * stored, (planned.weight_bytes, stored)
    # With the files at hand the headers' own total is used.
    assert size_model(load_model_metadata(str(directory))).weight_bytes == stored
    assert stored < 0.75 * tensor_bytes(work / "tiny")  # smaller than the float32 original it came from


def test_serve_runs_the_gptq_output_with_the_flag_a_tgi_spec_gets(outputs, work):
    process = ServeProcess(outputs["W4A16_GPTQ"], "--quantize", "compressed-tensors").start()
    try:
        process.wait_ready()
    finally:
        process.stop()
    # The flag names the checkpoint's own format: serve.py refuses it for the unquantized source, as any other.
    check_quantize("compressed-tensors", outputs["FP8_DYNAMIC"])
    check_quantize(None, work / "tiny")
    for quantize, directory in (("compressed-tensors", work / "tiny"), ("fp8", outputs["FP8_DYNAMIC"])):
        with pytest.raises(StartupError) as refused:
            check_quantize(quantize, directory)
        assert f"cannot apply --quantize {quantize}" in str(refused.value)

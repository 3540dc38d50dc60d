"""workers/jobs/quantize.py as a real program in the ML environment on the tiny random Llama: GPTQ W4A16 and
FP8_DYNAMIC write compressed-tensors model directories with manifests (serve.py loading and generating from such
copies, and the planner sizing them, is tests/workers/test_quantize_quality.py's, on the small model); a
run killed mid-quantize leaves nothing at output_dir and a rerun succeeds; SIGTERM stops between phases; bad input
exits 2 before torch loads, naming the field. Calibration rows never reach the log.

The tiny model's widths (64, 176) take no group size of 32 or more: the runs use one scale per channel (-1).
Timings on 2 shared cores: each run ~6 s (imports; the quantization itself < 1 s), the killed
run + rerun ~12 s, the bad-input runs < 1 s each."""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.job_program import run_job
from tests.support.serve_process import make_model, ml_python
from workers.jobs.manifest import read_manifest, verify_manifest
from workers.jobs.protocol import EXIT_BAD_INPUT, EXIT_OK, EXIT_STOPPED

CANARY = "CANARY-5d1a-never-logged"
RESULT_FIELDS = {
    "kind",
    "path",
    "scheme",
    "recipe",
    "versions",
    "seconds",
    "peak_memory_bytes",
    "calibration_samples",
    "calibration_sha256",
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run the quantize program")
    root = tmp_path_factory.mktemp("quantize")
    make_model(root / "tiny")
    rows = [{"text": f"{CANARY} row {index}: the console deploys a model and serves it."} for index in range(24)]
    (root / "calibration.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def spec_for(work: Path, output: str, scheme: str, **change) -> dict:
    spec = {
        "source_model": str(work / "tiny"),
        "output_dir": str(work / output),
        "scheme": scheme,
        "group_size": -1,
        "calibration": {"path": str(work / "calibration.jsonl"), "samples": 16, "seq_len": 64},
    }
    spec.update(change)
    return spec


@pytest.fixture(scope="module")
def gptq(work):
    """A GPTQ run killed with SIGKILL once quantizing began, then the same spec run again."""

    def kill_when_quantizing(event, process):
        if event["type"] == "log" and event["message"].startswith("Quantizing"):
            process.send_signal(signal.SIGKILL)

    spec = spec_for(work, "gptq", "W4A16_GPTQ")
    killed = run_job("quantize", spec, work / "gptq-killed", on_event=kill_when_quantizing)
    left_at_output = (work / "gptq").exists()
    # A stale .partial from a killed run (whether or not the kill above left one) is removed by the rerun.
    (work / "gptq.partial").mkdir(exist_ok=True)
    (work / "gptq.partial" / "stale.bin").write_bytes(b"half a model")
    rerun = run_job("quantize", spec, work / "gptq-run")
    assert rerun.code == EXIT_OK, (rerun.events[-3:], rerun.stderr[-3000:])
    return killed, left_at_output, rerun


@pytest.fixture(scope="module")
def fp8(work):
    run = run_job("quantize", spec_for(work, "fp8", "FP8_DYNAMIC", calibration=None), work / "fp8-run")
    assert run.code == EXIT_OK, (run.events[-3:], run.stderr[-3000:])
    return run


def test_a_killed_run_leaves_no_model_and_a_rerun_succeeds(work, gptq):
    killed, left_at_output, rerun = gptq
    assert killed.code == -signal.SIGKILL and not killed.of("result")
    assert not left_at_output
    assert not (work / "gptq.partial").exists() and not (work / "gptq" / "stale.bin").exists()
    assert any("left by an earlier run" in event["message"] for event in rerun.of("log"))


@pytest.mark.parametrize(
    ("scheme", "config_format"), [("W4A16_GPTQ", "pack-quantized"), ("FP8_DYNAMIC", "float-quantized")]
)
def test_the_output_is_a_compressed_tensors_model_with_a_manifest_and_a_result(work, gptq, fp8, scheme, config_format):
    run = gptq[2] if scheme == "W4A16_GPTQ" else fp8
    result = run.one("result")
    assert set(result) >= RESULT_FIELDS and result["kind"] == "quantized_model" and result["scheme"] == scheme
    output = Path(result["path"])
    quantization = json.loads((output / "config.json").read_text())["quantization_config"]
    assert (quantization["quant_method"], quantization["format"]) == ("compressed-tensors", config_format)
    assert quantization["ignore"] == ["lm_head"]
    manifest = read_manifest(output)
    assert verify_manifest(output) == [] and all(len(entry["sha256"]) == 64 for entry in manifest["files"])
    assert {"model.safetensors", "tokenizer.json", "config.json"} <= {entry["path"] for entry in manifest["files"]}
    assert manifest["lineage"]["source_model"] == str(work / "tiny") and manifest["lineage"]["scheme"] == scheme
    assert (output / "tokenizer.json").read_bytes() == (work / "tiny" / "tokenizer.json").read_bytes()
    assert set(result["versions"]) == {"llmcompressor", "compressed-tensors", "transformers", "torch"}
    assert result["versions"]["llmcompressor"] == "0.14.0.1" and result["peak_memory_bytes"] > 10**7
    if scheme == "W4A16_GPTQ":
        assert "GPTQModifier" in result["recipe"] and "strategy: channel" in result["recipe"]
        assert result["calibration_samples"] == 16
        expected = hashlib.sha256((work / "calibration.jsonl").read_bytes()).hexdigest()
        assert result["calibration_sha256"] == expected == manifest["lineage"]["calibration_sha256"]
        assert (
            json.loads((output / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"][
                "weights"
            ]["num_bits"]
            == 4
        )
    else:
        assert "FP8_DYNAMIC" in result["recipe"]
        assert (result["calibration_samples"], result["calibration_sha256"]) == (0, None)
    assert CANARY not in json.dumps(run.events) + run.stderr


def test_sigterm_stops_between_phases_and_writes_nothing(work):
    def stop_when_loading(event, process):
        if event["type"] == "log" and event["message"].startswith("Loading"):
            process.send_signal(signal.SIGTERM)

    spec = spec_for(work, "stopped", "W4A16_RTN")
    run = run_job("quantize", spec, work / "stopped-run", on_event=stop_when_loading)
    assert run.code == EXIT_STOPPED and not run.of("result")
    assert not (work / "stopped").exists() and not (work / "stopped.partial").exists()


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"source_model": "quantized"}, "source_model", "already quantized (gptq)"),
        ({"scheme": "W3A16"}, "scheme", "W4A16_GPTQ"),
        ({"calibration": {"path": "short.jsonl", "samples": 8}}, "calibration.samples", "has 3 calibration rows"),
        ({"group_size": 128}, "group_size", "hidden_size (64)"),
        ({"scheme": "W4A16_AWQ"}, "scheme", "cannot run on a CPU"),
    ],
)
def test_bad_input_is_refused_before_any_work_with_the_field(work, change, field, words):
    quantized = work / "quantized"
    quantized.mkdir(exist_ok=True)
    config = json.loads((work / "tiny" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (quantized / "config.json").write_text(json.dumps(config))
    (work / "short.jsonl").write_text("".join(json.dumps({"text": f"{CANARY} {i}"}) + "\n" for i in range(3)))
    spec = {**spec_for(work, "refused", "W4A16_GPTQ"), **change}
    if "source_model" in change:
        spec["source_model"] = str(work / change["source_model"])
    if "calibration" in change:
        spec["calibration"]["path"] = str(work / change["calibration"]["path"])
    run = run_job("quantize", spec, work / "refused-run")
    assert run.code == EXIT_BAD_INPUT
    error = run.one("error")
    assert error["field"] == field and words in error["message"], error
    assert not run.of("progress") and not run.of("log")  # refused before the model loads
    assert not (work / "refused").exists() and CANARY not in json.dumps(run.events) + run.stderr

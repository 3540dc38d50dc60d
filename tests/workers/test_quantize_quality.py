"""Issue 18, Show 1: what a quantization costs in quality, measured on CPU with the real job programs. The model
factory's small Llama (~85M parameters) is first fully fine-tuned on a generated corpus, so that it predicts held-out
text far better than chance and its perplexity means something; then quantize.py makes GPTQ W4A16, plain
round-to-nearest W4A16 (the same scheme without GPTQ's error correction) and FP8-dynamic copies of it, serve.py loads
and generates from the GPTQ and FP8 copies, the planner sizes each within 5 % of its safetensors tensors, and
evaluate.py scores all four (and the untrained model) on the same held-out token ids: FP8 <= base x 1.05,
GPTQ <= base x 1.25 and below RTN.

The corpus: sentences drawn from a small grammar (seeded), so the held-out lines follow the same rules as the
training lines but are other sentences. Timings on 2 shared cores are printed with the figures."""

from __future__ import annotations

import json
import math
import random
import struct
import time
from pathlib import Path

import pytest
import requests

from deployments.sizing import ModelMetadata, load_model_metadata, size_model
from tests.conftest import need
from tests.support.job_program import run_job
from tests.support.serve_process import ServeProcess, make_model, ml_python
from workers.jobs.protocol import EXIT_OK
from workers.jobs.serve import StartupError, check_quantize

DTYPE_BYTES = {"F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "F8_E4M3": 1}
SUBJECTS = ["the operator", "a nurse", "the miner", "our engineer", "the auditor", "a bank clerk", "the model"]
VERBS = ["checks", "deploys", "reads", "restarts", "measures", "approves", "loads", "watches"]
OBJECTS = ["the server", "a new model", "the GPU", "the audit log", "every shard", "the weights", "a dataset"]
ENDINGS = ["before noon", "on the night shift", "twice a day", "after the update", "without a network", "at once"]


def sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}."


def tensor_bytes(directory: Path) -> int:
    total = 0
    for path in directory.glob("*.safetensors"):
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        total += sum(
            DTYPE_BYTES[info["dtype"]] * math.prod(info["shape"]) for name, info in header.items() if name[:2] != "__"
        )
    return total


# Five and a half minutes of the suite's fifty: `make bench` runs it (bench/bench_heavy.py); the same programs' chain
# on the tiny model (quantize, serve, evaluate) stays in `make test` (tests/deployments/quality/test_end_to_end.py).
@pytest.mark.heavy
def test_quantized_copies_of_a_trained_model_keep_its_perplexity_within_the_bounds(tmp_path):
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run the job programs")
    timings = {}
    began = time.monotonic()
    base = make_model(tmp_path / "small", "small")
    rng = random.Random(18)
    train = tmp_path / "corpus.jsonl"
    train.write_text("".join(json.dumps({"text": sentence(rng)}) + "\n" for _ in range(3000)))
    held_out = tmp_path / "held-out.txt"
    held_out.write_text("\n".join(sentence(rng) for _ in range(160)) + "\n")
    timings["model"] = time.monotonic() - began

    began = time.monotonic()
    tuned = run_job(
        "finetune",
        {
            "base_model": str(base),
            "dataset": str(train),
            "output_dir": str(tmp_path / "ft"),
            "method": "full",
            "precision": "fp32",
            "checkpoint_every": 1000,
            "hyperparameters": {
                "max_steps": 60,
                "learning_rate": 1e-3,
                "batch_size": 8,
                "max_seq_len": 64,
                "packing": True,
            },
        },
        tmp_path / "ft-run",
        timeout=900,
    )
    assert tuned.code == EXIT_OK, (tuned.events[-3:], tuned.stderr[-3000:])
    model = tmp_path / "ft" / "model"
    timings["fine-tune"] = time.monotonic() - began

    copies = {}
    calibration = {"path": str(train), "samples": 64, "seq_len": 64}
    for scheme in ("W4A16_GPTQ", "W4A16_RTN", "FP8_DYNAMIC"):
        began = time.monotonic()
        spec = {"source_model": str(model), "output_dir": str(tmp_path / scheme), "scheme": scheme}
        if scheme != "FP8_DYNAMIC":
            spec |= {"group_size": 128, "calibration": calibration}  # 768 and 2048 wide: groups of 128 fit
        run = run_job("quantize", spec, tmp_path / f"{scheme}-run", timeout=600)
        assert run.code == EXIT_OK, (scheme, run.events[-3:], run.stderr[-3000:])
        copies[scheme] = Path(run.one("result")["path"])
        timings[scheme] = time.monotonic() - began

    # The planner, from config.json alone, against the bytes the tensors take.
    for scheme in ("W4A16_GPTQ", "FP8_DYNAMIC"):
        config = json.loads((copies[scheme] / "config.json").read_text())
        planned, stored = size_model(ModelMetadata(config=config)).weight_bytes, tensor_bytes(copies[scheme])
        assert abs(planned - stored) <= 0.05 * stored, (scheme, planned, stored)

    # With the files at hand the headers' own total is used; the copies are smaller than the float32 model.
    for scheme in ("W4A16_GPTQ", "FP8_DYNAMIC"):
        assert size_model(load_model_metadata(str(copies[scheme]))).weight_bytes == tensor_bytes(copies[scheme])
        assert tensor_bytes(copies[scheme]) < 0.75 * tensor_bytes(model)
    # --quantize compressed-tensors (what a TGI spec gets for such a checkpoint) names the checkpoint's own format:
    # serve.py refuses it for the unquantized model, and any other value for a quantized one.
    check_quantize("compressed-tensors", copies["FP8_DYNAMIC"])
    check_quantize(None, model)
    for quantize, directory in (("compressed-tensors", model), ("fp8", copies["FP8_DYNAMIC"])):
        with pytest.raises(StartupError) as refused:
            check_quantize(quantize, directory)
        assert f"cannot apply --quantize {quantize}" in str(refused.value)

    # serve.py loads both (the GPTQ copy with the TGI spec's flag), decompresses them on CPU and generates.
    for scheme, flags in (("W4A16_GPTQ", ("--quantize", "compressed-tensors")), ("FP8_DYNAMIC", ())):
        began = time.monotonic()
        server = ServeProcess(copies[scheme], *flags).start()
        try:
            server.wait_ready(300)
            answer = requests.post(
                f"{server.url}/generate",
                json={"inputs": "the operator", "parameters": {"max_new_tokens": 8, "details": True}},
                timeout=120,
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["details"]["generated_tokens"] > 0
            assert "Decompressing compressed-tensors weights" in server.output
        finally:
            server.stop()
        timings[f"serve {scheme}"] = time.monotonic() - began

    began = time.monotonic()
    names = {"base": model, **copies, "untrained": base}
    evaluated = run_job(
        "evaluate",
        {
            "models": [{"id": name, "path": str(path)} for name, path in names.items()],
            "perplexity": {"path": str(held_out), "context_length": 64, "stride": 64, "max_tokens": 4096},
            "device": "cpu",
        },
        tmp_path / "evaluate-run",
        timeout=900,
    )
    assert evaluated.code == EXIT_OK, (evaluated.events[-3:], evaluated.stderr[-3000:])
    timings["evaluate"] = time.monotonic() - began
    figures = evaluated.one("result")["models"]
    perplexity = {name: figures[name]["perplexity"] for name in names}
    tokens = {figures[name]["tokens"] for name in names}
    print("\nperplexity on the same held-out tokens:", perplexity, "tokens:", tokens)
    print("seconds:", {k: round(v, 1) for k, v in timings.items()})

    assert len(tokens) == 1  # the same token ids for all four
    # The fine-tune learnt the grammar: far better than the untrained weights (about the vocabulary's 8000).
    assert perplexity["base"] < perplexity["untrained"] / 10
    assert perplexity["FP8_DYNAMIC"] <= perplexity["base"] * 1.05
    assert perplexity["W4A16_GPTQ"] <= perplexity["base"] * 1.25
    assert perplexity["W4A16_GPTQ"] < perplexity["W4A16_RTN"]

"""The fine-tune checks that need a CUDA GPU (issue 14), in one run: QLoRA and the training memory estimate.

    python3 scripts/gpu/finetune_checks.py --out DIR      (scripts/gpu/finetune_checks.sh sets it up)

1. QLoRA: `python -m workers.jobs.finetune` with method qlora (4-bit bitsandbytes) on the tiny random Llama of
   workers/jobs/tiny_model.py and the 16-pair prompt→completion set of tests/workers/test_finetune_program.py,
   beside a LoRA run in bf16: each must exit 0 with one result event, a falling loss, and an adapter (and
   checkpoints) whose manifest verifies. On a host without CUDA the QLoRA run must be refused (qlora_needs_cuda)
   and the LoRA run trains in fp32: that is what a local run of this script checks.
2. Memory: bench/train_memory_probe.py --device cuda on a random ~1B Llama (Llama 3.2 1B's shape) built on the
   GPU, full and LoRA, with and without gradient checkpointing, micro batch 4 x 1024 tokens, one fresh process
   each (a peak is per process) and nothing else on the GPU meanwhile (the context figure reads the whole
   device). Each peak is compared with deployments.sizing.training's estimate; the runs are written as the
   fixture tests/fixtures/training-memory/cuda-h200.json. Skipped without CUDA.

Writes DIR/finetune-checks.json (everything, with the verdicts) and, on CUDA, DIR/cuda-probe.jsonl and
DIR/cuda-h200.json. Exit status 0 when every check that could run here passed. Runs under the ML environment's
python (or the device's python3 with the carried wheels); imports nothing from Django.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from deployments.sizing.training import TrainingSetup, estimate_training  # noqa: E402 (pure Python)
from workers.jobs.manifest import verify_manifest  # noqa: E402
from workers.jobs.protocol import parse_event  # noqa: E402

# The data and hyperparameters of tests/workers/test_finetune_program.py: 16 codes, each mapped to a colour.
PAIRS = (
    "alpha:red bravo:green charlie:blue delta:yellow echo:black foxtrot:white golf:purple hotel:orange "
    "india:pink juliet:brown kilo:gray lima:gold mike:silver november:violet oscar:cyan papa:lime"
)
MAPPING = {f"Code {code}?": f" {colour}." for code, colour in (pair.split(":") for pair in PAIRS.split())}
HYPERPARAMETERS = {
    "learning_rate": 1e-2,
    "max_steps": 80,
    "batch_size": 8,
    "warmup_steps": 5,
    "lora_dropout": 0.05,
    "modules_to_save": ["lm_head"],
    "seed": 7,
}
# Llama 3.2 1B's shape (tests/deployments/sizing/test_training_estimate.py): 1,235,814,400 parameters.
LLAMA_1B = {
    "model_type": "llama",
    "hidden_size": 2048,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "intermediate_size": 8192,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
}
MICRO_BATCH, SEQ_LEN = 4, 1024
# (method, gradient checkpointing, bf16 weights). The first four are the estimate's mixed precision (fp32 master);
# the last two store a full fine-tune's weights in bf16 as the fine-tune program loads them: recorded, not compared.
PROBES = [
    ("full", False, False),
    ("full", True, False),
    ("lora", False, False),
    ("lora", True, False),
]
EXTRA_PROBES = [("full", False, True), ("full", True, True)]
GOAL = 0.15


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def child_env(home: Path) -> dict[str, str]:
    """The environment of every child: this repo and any carried wheels on the path, nothing from the network."""
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(path),
        PYTHONUNBUFFERED="1",
        HOME=str(home),
        HF_HOME=str(home / "hf"),
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    return env


def host_facts(env: dict[str, str]) -> dict[str, Any]:
    """CUDA, the GPU and the package versions, read in a child so this process never holds a CUDA context."""
    code = """
import json
from importlib import metadata
import torch
facts = {"cuda": torch.cuda.is_available(), "torch": torch.__version__, "torch_cuda": torch.version.cuda}
if facts["cuda"]:
    facts["gpu"] = torch.cuda.get_device_name(0)
    facts["capability"] = list(torch.cuda.get_device_capability(0))
    facts["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
for name in ("transformers", "peft", "trl", "datasets", "accelerate", "bitsandbytes", "pyarrow", "fsspec"):
    try:
        facts[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        facts[name] = None
try:
    import bitsandbytes
    facts["bitsandbytes_import"] = "ok"
except Exception as exc:
    facts["bitsandbytes_import"] = f"{type(exc).__name__}: {exc}"[:500]
print(json.dumps(facts))
"""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    if done.returncode != 0:
        return {"cuda": False, "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- 1. QLoRA and LoRA through the fine-tune program -------------------------------------------------------


def prepare_data(work: Path, env: dict[str, str]) -> tuple[Path, Path]:
    model = work / "tiny"
    if not (model / "config.json").is_file():
        command = [sys.executable, "-m", "workers.jobs.tiny_model", str(model), "--size", "tiny", "--seed", "0"]
        subprocess.run(command, env=env, cwd=ROOT, check=True, capture_output=True, timeout=300)
    dataset = work / "mapping.jsonl"
    rows = (json.dumps({"prompt": prompt, "completion": completion}) for prompt, completion in MAPPING.items())
    dataset.write_text("".join(row + "\n" for row in rows))
    return model, dataset


def start_finetune(work: Path, name: str, method: str, precision: str, env: dict[str, str]) -> subprocess.Popen:
    model, dataset = work / "tiny", work / "mapping.jsonl"
    spec = {
        "base_model": str(model),
        "dataset": str(dataset),
        "output_dir": str(work / name),
        "method": method,
        "precision": precision,
        "checkpoint_every": 20,
        "hyperparameters": dict(HYPERPARAMETERS),
    }
    spec_file = work / f"{name}-spec.json"
    spec_file.write_text(json.dumps(spec))
    stderr = open(work / f"{name}-stderr.txt", "w")  # noqa: SIM115 (closed by finish_finetune)
    command = [sys.executable, "-m", "workers.jobs.finetune", "--spec", str(spec_file)]
    process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    process.started = time.monotonic()  # type: ignore[attr-defined]
    process.stderr_file = stderr  # type: ignore[attr-defined]
    return process


def finish_finetune(work: Path, name: str, process: subprocess.Popen, timeout: float) -> dict[str, Any]:
    """Wait for the run and judge it as the program tests do (events, loss curve, manifests)."""
    try:
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, _ = process.communicate()
    process.stderr_file.close()  # type: ignore[attr-defined]
    lines = stdout.splitlines()
    events = [parse_event(line) for line in lines]
    stray = [line for line, event in zip(lines, events, strict=True) if event is None]
    events = [event for event in events if event is not None]
    losses = {event["step"]: event["loss"] for event in events if event["type"] == "metric" and "loss" in event}
    results = [event for event in events if event["type"] == "result"]
    errors = [event for event in events if event["type"] == "error"]
    checkpoints = [event for event in events if event["type"] == "checkpoint"]
    logs = [event["message"] for event in events if event["type"] == "log"]
    summary: dict[str, Any] = {
        "exit_code": process.returncode,
        "seconds": round(time.monotonic() - process.started, 1),  # type: ignore[attr-defined]
        "not_events_on_stdout": len(stray),
        "logs": logs,
        "error": errors[-1] if errors else None,
        "checkpoint_steps": [event["step"] for event in checkpoints],
        "checkpoint_problems": {event["path"]: verify_manifest(event["path"]) for event in checkpoints},
        "first_loss": losses[min(losses)] if losses else None,
        "last_loss": losses[max(losses)] if losses else None,
        "losses": [losses[step] for step in sorted(losses)],
        "stderr_tail": (work / f"{name}-stderr.txt").read_text(errors="replace")[-3000:],
    }
    if len(results) == 1:
        result = results[0]
        manifest = json.loads((Path(result["path"]) / "manifest.json").read_text())
        summary.update(
            result={key: result[key] for key in ("kind", "path", "step", "training_seconds", "files")},
            adapter_problems=verify_manifest(result["path"]),
            adapter_files=[entry["path"] for entry in manifest["files"]],
            lineage_precision=manifest["lineage"].get("precision"),
            lineage_versions=manifest["lineage"].get("versions"),
        )
    return summary


def judge_training(run: dict[str, Any]) -> dict[str, bool]:
    falls = run["first_loss"] is not None and run["last_loss"] < run["first_loss"]
    return {
        "exit_0": run["exit_code"] == 0,
        "one_result_event": "result" in run,
        "only_events_on_stdout": run["not_events_on_stdout"] == 0,
        "loss_falls": falls,
        "loss_halves": falls and run["last_loss"] <= run["first_loss"] / 2,
        "adapter_manifest_verifies": run.get("adapter_problems") == [],
        "checkpoint_manifests_verify": bool(run["checkpoint_problems"])
        and all(problems == [] for problems in run["checkpoint_problems"].values()),
    }


def finetune_checks(work: Path, env: dict[str, str], cuda: bool, timeout: float) -> dict[str, Any]:
    if cuda:
        runs = {"qlora": ("qlora", "bf16"), "lora_bf16": ("lora", "bf16")}
    else:
        runs = {"qlora": ("qlora", "auto"), "lora_cpu": ("lora", "auto")}
    started = {name: start_finetune(work, name, method, precision, env) for name, (method, precision) in runs.items()}
    checks: dict[str, Any] = {}
    for name, process in started.items():
        run = finish_finetune(work, name, process, timeout)
        if cuda or name != "qlora":
            run["checks"] = judge_training(run)
            if run.get("lineage_precision") is not None:
                run["checks"]["precision_" + runs[name][1]] = run["lineage_precision"] == runs[name][1] or not cuda
        else:  # no CUDA: the program must refuse QLoRA before it trains anything
            error = run["error"] or {}
            run["checks"] = {
                "exit_2": run["exit_code"] == 2,
                "refused_qlora_needs_cuda": error.get("cause") == "qlora_needs_cuda",
                "nothing_written": not (work / name).exists(),
            }
        run["passed"] = all(run["checks"].values())
        log(
            f"finetune {name}: exit {run['exit_code']}, loss {run['first_loss']} -> {run['last_loss']}, {run['checks']}"
        )
        checks[name] = run
    return checks


# --- 2. The memory estimate against the CUDA peak ----------------------------------------------------------


def probe(method: str, checkpointing: bool, bf16_weights: bool, env: dict[str, str], timeout: float) -> dict:
    command = [sys.executable, str(ROOT / "bench" / "train_memory_probe.py"), "--device", "cuda"]
    command += ["--precision", "bf16", "--method", method, "--config", json.dumps(LLAMA_1B)]
    command += ["--micro-batch", str(MICRO_BATCH), "--seq-len", str(SEQ_LEN)]
    command += ["--checkpointing"] if checkpointing else []
    command += ["--bf16-weights"] if bf16_weights else []
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        return {"method": method, "gradient_checkpointing": checkpointing, "error": done.stderr[-3000:]}
    run = json.loads(done.stdout.strip().splitlines()[-1])
    shown = ["python3", "bench/train_memory_probe.py", *command[2:]]
    shown[shown.index("--config") + 1] = "'<LLAMA_1B>'"  # the run's `config` holds it
    run["command"] = " ".join(shown)
    return run


def estimate_for(run: dict[str, Any]):
    """The planner's CUDA estimate for what the probe ran (tests/deployments/sizing/test_training_estimate_cuda.py
    reads the same)."""
    setup = TrainingSetup(
        method=run["method"],
        precision=run["precision"],
        micro_batch_size=run["micro_batch"],
        max_seq_len=run["seq_len"],
        gradient_accumulation=run["accumulation"],
        gradient_checkpointing=run["gradient_checkpointing"],
        lora_r=run["lora_r"] or 16,
        lora_target_modules=tuple(run["lora_targets"] or ()),
        device="cuda",
    )
    return estimate_training(run["config"], setup)


def compare(run: dict[str, Any]) -> dict[str, Any]:
    est = estimate_for(run)
    tensors = est.total - est.overhead  # the allocator's peak holds tensors only; the context is apart
    return {
        "estimate_total": est.total,
        "estimate_tensors": tensors,
        "estimate_breakdown": est.as_dict(),
        "measured_peak_allocated": run["measured_bytes"],
        "measured_context": run["context_bytes"],
        "gap_tensors_percent": round((tensors - run["measured_bytes"]) / run["measured_bytes"] * 100, 2),
        "gap_total_percent": round(
            (est.total - run["measured_bytes"] - run["context_bytes"])
            / (run["measured_bytes"] + run["context_bytes"])
            * 100,
            2,
        ),
    }


def memory_checks(facts: dict[str, Any], env: dict[str, str], out: Path, deadline: float) -> dict[str, Any]:
    runs, extra = [], []
    for todo, into in ((PROBES, runs), (EXTRA_PROBES, extra)):
        for method, checkpointing, bf16_weights in todo:
            left = deadline - time.monotonic()
            if left < 30:
                log(f"probe {method} ckpt={checkpointing} bf16w={bf16_weights}: skipped, out of time")
                continue
            try:
                run = probe(method, checkpointing, bf16_weights, env, timeout=min(150, left))
            except subprocess.TimeoutExpired:
                run = {"method": method, "gradient_checkpointing": checkpointing, "error": "timed out"}
            if "error" not in run:
                run["comparison"] = compare(run)
                gap = run["comparison"]["gap_tensors_percent"]
                log(
                    f"probe {method} ckpt={checkpointing} bf16w={bf16_weights}: peak {run['measured_bytes'] / 1e9:.2f}"
                    f" GB, estimate {run['comparison']['estimate_tensors'] / 1e9:.2f} GB ({gap:+.1f} %),"
                    f" context {run['context_bytes'] / 1e9:.2f} GB, {run['seconds']} s"
                )
            else:
                log(f"probe {method} ckpt={checkpointing} bf16w={bf16_weights}: FAILED {run['error'][-500:]}")
            into.append(run)
            with open(out / "cuda-probe.jsonl", "a") as handle:
                handle.write(json.dumps(run) + "\n")
    fixture = {
        "source": {
            "device": facts.get("gpu"),
            "gpu_memory_bytes": facts.get("gpu_memory_bytes"),
            "torch": facts.get("torch"),
            "cuda": facts.get("torch_cuda"),
            "transformers": facts.get("transformers"),
            "peft": facts.get("peft"),
            "date": datetime.date.today().isoformat(),
            "command": "scripts/gpu/finetune_checks.sh (each run: its `command`; <LLAMA_1B> is the run's `config`)",
            "measured_bytes": "torch.cuda.max_memory_allocated() over 3 optimizer steps, every tensor (weights "
            "included) of a process that held nothing on the GPU before; context_bytes: device memory in use "
            "(cudaMemGetInfo) minus the allocator's reserved pool, at the end",
        },
        "runs": [{k: v for k, v in run.items() if k != "comparison"} for run in runs if "error" not in run],
        "bf16_weight_runs": [
            {k: v for k, v in run.items() if k != "comparison"} for run in extra if "error" not in run
        ],
    }
    (out / "cuda-h200.json").write_text(json.dumps(fixture, indent=1) + "\n")
    passed = len(fixture["runs"]) == len(PROBES) and all(
        abs(run["comparison"]["gap_tensors_percent"]) <= GOAL * 100 for run in runs if "comparison" in run
    )
    return {"passed": passed, "runs": runs, "bf16_weight_runs": extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT"), help="where the JSON goes ($OUT; else a new folder)")
    parser.add_argument("--work", help="scratch directory for models and runs (default: a new temporary one)")
    parser.add_argument("--budget-s", type=float, default=380, help="stop starting new work after this long")
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    out = Path(args.out or tempfile.mkdtemp(prefix="finetune-checks-out-"))
    work = Path(args.work or tempfile.mkdtemp(prefix="finetune-checks-"))
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    env = child_env(work / "home")
    (work / "home").mkdir(exist_ok=True)
    facts = host_facts(env)
    log(f"host: {json.dumps(facts)}")
    report: dict[str, Any] = {"facts": facts}
    cuda = bool(facts.get("cuda"))
    prepare_data(work, env)  # on the CPU, before the GPU is measured
    # Memory first, alone on the GPU: the context figure reads the whole device.
    if cuda and not args.skip_memory:
        report["memory"] = memory_checks(facts, env, out, deadline - 120)
    else:
        report["memory"] = {"passed": None, "skipped": "no CUDA GPU" if not cuda else "--skip-memory"}
    finetune_timeout = max(60, deadline - time.monotonic())
    report["finetune"] = finetune_checks(work, env, cuda, finetune_timeout)
    (out / "finetune-checks.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    verdicts = [run["passed"] for run in report["finetune"].values()] + [report["memory"]["passed"]]
    log(f"verdicts: finetune {[r['passed'] for r in report['finetune'].values()]}, memory {verdicts[-1]}")
    return 0 if all(v is not False for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())

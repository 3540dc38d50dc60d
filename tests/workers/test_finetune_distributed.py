"""The fine-tune program under data parallel on CPU (torchrun, gloo), started with the command the console uses
(`workers.mlenv.distributed_job_command`): two processes at half the batch train as one process at the whole
batch, rank 0 alone speaks and writes, and a SIGTERM stops both ranks after the same checkpoint.

Timings on 2 shared cores: the single-process run ~9 s, each two-process run ~18 s (two interpreters import
torch, then 8 gloo steps)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.job_program import JOB_ENV, JobRun, run_job
from tests.support.serve_process import ROOT, make_model, ml_env, ml_python
from workers.jobs.manifest import verify_manifest
from workers.jobs.protocol import EXIT_OK, parse_event
from workers.mlenv import distributed_job_command

PAIRS = "alpha:red bravo:green charlie:blue delta:yellow echo:black foxtrot:white golf:purple hotel:orange"
GLOBAL_BATCH = 4
# No dropout: its masks are drawn per process, so they would differ from one process's draws.
HYPERPARAMETERS = {
    "learning_rate": 1e-2,
    "max_steps": 8,
    "lora_dropout": 0.0,
    "modules_to_save": ["lm_head"],
    "seed": 7,
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run the fine-tune program")
    root = tmp_path_factory.mktemp("finetune-ddp")
    make_model(root / "tiny")
    records = (pair.split(":") for pair in PAIRS.split())
    (root / "mapping.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Code {code}?", "completion": f" {colour}."}) + "\n" for code, colour in records)
    )
    return root


def spec_for(work: Path, output: str, batch_size: int, **hyper) -> dict:
    return {
        "base_model": str(work / "tiny"),
        "dataset": str(work / "mapping.jsonl"),
        "output_dir": str(work / output),
        "checkpoint_every": 4,
        "hyperparameters": {**HYPERPARAMETERS, "batch_size": batch_size, **hyper},
    }


def run_distributed(
    spec: dict, work: Path, processes: int, *, on_event: Callable[[dict, subprocess.Popen], None] | None = None
) -> tuple[JobRun, list[dict]]:
    """Run the program as the console would on `processes` CPU processes; returns rank 0's run (what the console
    reads) and rank 1's events, from torchrun's log files (TMPDIR points them into the test's directory)."""
    work.mkdir(parents=True)
    (work / "tmp").mkdir()
    (work / "spec.json").write_text(json.dumps(spec))
    env = ml_env({"HOME": str(work), "HF_HOME": str(work / "hf"), "TMPDIR": str(work / "tmp"), **JOB_ENV})
    command = distributed_job_command("finetune", processes, "--spec", str(work / "spec.json"))
    with open(work / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
        watchdog = threading.Timer(300, lambda: os.killpg(process.pid, signal.SIGKILL))  # a hang fails the test
        watchdog.start()
        run = JobRun(code=-1)
        try:
            for line in process.stdout:
                event = parse_event(line)
                assert event is not None, f"not an event on stdout: {line!r}"
                run.events.append(event)
                if on_event:
                    on_event(event, process)
            run.code = process.wait(300)
        finally:
            watchdog.cancel()
    run.stderr = (work / "stderr.txt").read_text()
    [rank_1_stdout] = (work / "tmp").glob("torchelastic_*/*/attempt_0/1/stdout.log")
    return run, [parse_event(line) for line in rank_1_stdout.read_text().splitlines()]


@pytest.fixture(scope="module")
def one_process(work) -> JobRun:
    run = run_job("finetune", spec_for(work, "one", GLOBAL_BATCH), work / "one-run")
    assert run.code == EXIT_OK, (run.events[-3:], run.stderr[-3000:])
    return run


def test_two_processes_at_half_the_batch_train_as_one_process_at_the_whole_batch(work, one_process):
    two, rank_1 = run_distributed(spec_for(work, "two", GLOBAL_BATCH // 2), work / "two-run", 2)
    assert two.code == EXIT_OK, (two.events[-3:], two.stderr[-3000:])  # torchrun exits 0 only if every rank did

    one_losses, two_losses = one_process.losses(), two.losses()
    assert sorted(two_losses) == list(range(1, 9))  # one metric event per step: rank 0's alone
    assert two_losses[8] == pytest.approx(one_losses[8], rel=0.02), (one_losses, two_losses)
    assert two_losses[8] < two_losses[1] * 0.8  # it learned, as the one process did
    assert [event["step"] for event in two.of("progress")] == list(range(1, 9))

    result = two.one("result")
    assert result["path"] == str(work / "two" / "adapter") and result["step"] == 8
    assert sorted(path.name for path in (work / "two").iterdir() if "adapter" in path.name) == ["adapter"]
    assert verify_manifest(result["path"]) == []
    lineage = json.loads((Path(result["path"]) / "manifest.json").read_text())["lineage"]
    assert lineage["processes"] == 2 and lineage["hyperparameters"]["batch_size"] == 2

    assert [event["step"] for event in two.of("checkpoint")] == [4, 8]
    for event in two.of("checkpoint"):  # rank 1's files were on disk before rank 0 wrote the manifest
        assert verify_manifest(event["path"]) == [], event["path"]
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= {file["path"] for file in event["manifest"]["files"]}
    assert rank_1 and not [event for event in rank_1 if event["type"] in ("progress", "metric", "result")]


def test_sigterm_stops_both_ranks_after_the_same_checkpoint(work):
    spec = spec_for(work, "stopped", GLOBAL_BATCH // 2, max_steps=400)
    spec["checkpoint_every"] = 1000

    def stop_at_step_3(event, process):
        if event["type"] == "progress" and event["step"] == 3:
            os.killpg(process.pid, signal.SIGTERM)  # as the process runtime stops a job: the whole group

    run, rank_1 = run_distributed(spec, work / "stopped-run", 2, on_event=stop_at_step_3)
    assert not run.of("result") and not run.of("error"), run.stderr[-3000:]
    [checkpoint] = run.of("checkpoint")
    step = checkpoint["step"]
    assert 3 <= step < 400 and verify_manifest(checkpoint["path"]) == []
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {file["path"] for file in checkpoint["manifest"]["files"]}
    stopped = f"Stopped on request at step {step}, after its checkpoint."
    assert stopped in [event["message"] for event in run.of("log")]
    assert stopped in [event["message"] for event in rank_1 if event["type"] == "log"]
    assert not (work / "stopped" / "adapter").exists()
    # torchrun reports a stop as 1 (a plain program exits 3); the console's judge counts it as cancelled.
    assert run.code == 1

"""workers/jobs/finetune.py and merge.py as real programs in the ML environment, on the tiny random Llama and a
generated dataset (16 prompts, each mapped to one colour): LoRA learns the mapping, the merged model answers as
base + adapter, SIGTERM stops after a checkpoint and a resume continues the same loss curve, bad data is
refused by line. Every stdout line is a protocol event (tests/support/job_program.py asserts it).

Timings on 2 shared cores: the module's reference run ~10 s, merge + greedy probe ~12 s, stop-and-resume
~20 s, the full fine-tune with eval ~8 s; the bad-input tests stop before torch loads (< 1 s each)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.job_program import JOB_ENV, run_job
from tests.support.serve_process import ROOT, make_model, ml_env, ml_python
from workers.jobs.manifest import verify_manifest
from workers.jobs.protocol import EXIT_BAD_INPUT, EXIT_OK, EXIT_STOPPED

PAIRS = (
    "alpha:red bravo:green charlie:blue delta:yellow echo:black foxtrot:white golf:purple hotel:orange "
    "india:pink juliet:brown kilo:gray lima:gold mike:silver november:violet oscar:cyan papa:lime"
)
MAPPING = {f"Code {code}?": f" {colour}." for code, colour in (pair.split(":") for pair in PAIRS.split())}
# Small and quick, and enough to memorise 16 pairs on a random 2-layer model. The random lm_head caps the
# logits near zero, so it is trained whole with the adapter (peft's modules_to_save), as one would for new
# tokens; LoRA alone cannot move a random model's loss by half.
HYPERPARAMETERS = {
    "learning_rate": 1e-2,
    "max_steps": 80,
    "batch_size": 8,  # two batches an epoch: data order matters for the resume test
    "warmup_steps": 5,
    "lora_dropout": 0.05,  # dropout draws: the RNG state must survive a resume too
    "modules_to_save": ["lm_head"],
    "seed": 7,
}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run the fine-tune program")
    root = tmp_path_factory.mktemp("finetune")
    make_model(root / "tiny")
    (root / "mapping.jsonl").write_text(
        "".join(
            json.dumps({"prompt": prompt, "completion": completion}) + "\n" for prompt, completion in MAPPING.items()
        )
    )
    return root


def spec_for(work: Path, output: str, **overrides) -> dict:
    spec = {
        "base_model": str(work / "tiny"),
        "dataset": str(work / "mapping.jsonl"),
        "output_dir": str(work / output),
        "method": "lora",
        "checkpoint_every": 20,
        "hyperparameters": dict(HYPERPARAMETERS),
    }
    spec.update(overrides)
    return spec


@pytest.fixture(scope="module")
def reference(work):
    """One uninterrupted LoRA run that the other tests read."""
    run = run_job("finetune", spec_for(work, "reference"), work / "reference-run")
    assert run.code == EXIT_OK, (run.events[-3:], run.stderr[-3000:])
    return run


def greedy(work: Path, **models: str) -> dict[str, list[str]]:
    probe = {"base": str(work / "tiny"), "prompts": list(MAPPING), "max_new_tokens": 6, **models}
    out = subprocess.run(
        [ml_python(), str(ROOT / "tests" / "support" / "finetune_probe.py"), json.dumps(probe)],
        env=ml_env({**JOB_ENV, "HOME": str(work)}),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    )
    return json.loads(out.stdout)


def test_lora_training_loss_falls_by_at_least_half_and_streams_its_curve(reference):
    losses = reference.losses()
    assert sorted(losses) == list(range(1, 81))  # one metric event per logging step
    assert losses[80] <= losses[1] / 2, (losses[1], losses[80])
    step = reference.of("metric")[-2]
    assert {"loss", "learning_rate", "grad_norm", "tokens_per_second", "step_time"} <= set(step)
    progress = reference.of("progress")
    assert progress[-1]["step"] == progress[-1]["total"] == 80 and "eta_seconds" in progress[-1]
    assert [event["step"] for event in reference.of("checkpoint")] == [20, 40, 60, 80]
    for event in reference.of("checkpoint"):
        assert verify_manifest(event["path"]) == [], event["path"]
        assert event["manifest"]["step"] == event["step"] and "loss" in event["manifest"]["metrics"]
    result = reference.one("result")
    assert result["kind"] == "adapter" and result["step"] == 80 and result["training_seconds"] > 0
    assert verify_manifest(result["path"]) == []
    lineage = json.loads((Path(result["path"]) / "manifest.json").read_text())["lineage"]
    assert lineage["dataset_rows"] == 16 and lineage["hyperparameters"]["seed"] == 7
    assert len(lineage["dataset_sha256"]) == 64 and lineage["versions"]["trl"]


def test_adapter_answers_the_trained_completions_and_the_merged_model_answers_the_same(work, reference):
    adapter = reference.one("result")["path"]
    merge = run_job(
        "merge",
        {"base_model": str(work / "tiny"), "adapter": adapter, "output_dir": str(work / "merged")},
        work / "merge-run",
    )
    assert merge.code == EXIT_OK, (merge.events, merge.stderr[-3000:])
    assert merge.one("result")["kind"] == "full_model" and verify_manifest(work / "merged") == []

    outputs = greedy(work, adapter=adapter, merged=str(work / "merged"))
    for index, (prompt, completion) in enumerate(MAPPING.items()):
        assert outputs["adapter"][index].startswith(completion), (prompt, outputs["adapter"][index])
        assert not outputs["base"][index].startswith(completion.rstrip(".")), (prompt, outputs["base"][index])
    assert outputs["merged"] == outputs["adapter"]


def test_sigterm_saves_a_checkpoint_and_the_resumed_run_repeats_the_uninterrupted_curve(work, reference):
    spec = spec_for(work, "interrupted")

    def stop_at_step_25(event, process):
        if event["type"] == "progress" and event["step"] == 25:
            process.send_signal(signal.SIGTERM)

    stopped = run_job("finetune", spec, work / "interrupted-run", on_event=stop_at_step_25)
    assert stopped.code == EXIT_STOPPED, (stopped.events[-3:], stopped.stderr[-3000:])
    assert not stopped.of("result") and not stopped.of("error")
    last = stopped.of("checkpoint")[-1]
    stop_step = last["step"]
    assert 25 <= stop_step < 80 and stop_step == stopped.of("progress")[-1]["step"]
    assert verify_manifest(last["path"]) == []

    resumed = run_job("finetune", {**spec, "resume_from": "latest"}, work / "resumed-run")
    assert resumed.code == EXIT_OK, (resumed.events[-3:], resumed.stderr[-3000:])
    before, after, expected = stopped.losses(), resumed.losses(), reference.losses()
    assert min(after) == stop_step + 1 and max(after) == 80  # the step count carried on
    for step in range(1, stop_step + 1):
        assert before[step] == pytest.approx(expected[step], rel=1e-4), step
    for step in range(stop_step + 1, 81):  # optimizer, scheduler, RNG and data order all came back
        assert after[step] == pytest.approx(expected[step], rel=1e-4), step


def test_full_fine_tune_with_an_eval_split_reports_eval_loss_and_writes_a_model(work):
    hyper = {**HYPERPARAMETERS, "max_steps": 4, "modules_to_save": None, "learning_rate": 1e-4}
    spec = spec_for(work, "full", method="full", eval_fraction=0.25, eval_every=2, hyperparameters=hyper)
    run = run_job("finetune", spec, work / "full-run")
    assert run.code == EXIT_OK, (run.events[-3:], run.stderr[-3000:])
    assert [event["step"] for event in run.of("metric") if "eval_loss" in event] == [2, 4]
    result = run.one("result")
    assert result["kind"] == "full_model" and Path(result["path"]).name == "model"
    assert (Path(result["path"]) / "model.safetensors").is_file() and verify_manifest(result["path"]) == []


def test_qlora_is_refused_with_a_reason_where_there_is_no_cuda(work):
    run = run_job(
        "finetune", spec_for(work, "qlora", method="qlora"), work / "qlora-run", env={"CUDA_VISIBLE_DEVICES": ""}
    )
    assert run.code == EXIT_BAD_INPUT
    error = run.one("error")
    assert error["cause"] == "qlora_needs_cuda" and error["field"] == "method" and "CUDA" in error["message"]
    assert not (work / "qlora").exists()


def write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


CANARY = "CANARY-7f3c1e-do-not-show"


def test_a_malformed_jsonl_line_is_refused_by_line_number_without_quoting_it(work):
    data = write_lines(
        work / "malformed.jsonl",
        [{"prompt": "a?", "completion": " b."}, {"prompt": "c?", "completion": " d."}, '{"prompt": "' + CANARY],
    )
    run = run_job("finetune", spec_for(work, "malformed", dataset=str(data)), work / "malformed-run")
    assert run.code == EXIT_BAD_INPUT
    error = run.one("error")
    assert error["line"] == 3 and error["cause"] == "bad_record" and "Line 3" in error["message"]
    assert CANARY not in json.dumps(run.events) + run.stderr  # an engineer reads errors, never rows
    assert not (work / "malformed").exists()


def test_a_chat_record_without_an_assistant_turn_is_refused_by_line_number(work):
    chat = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]
    data = write_lines(
        work / "chat.jsonl",
        [{"messages": chat}, {"messages": [{"role": "user", "content": CANARY}]}, {"messages": chat}],
    )
    run = run_job("finetune", spec_for(work, "chat", dataset=str(data)), work / "chat-run")
    assert run.code == EXIT_BAD_INPUT
    error = run.one("error")
    assert error["line"] == 2 and "assistant turn" in error["message"]
    assert CANARY not in json.dumps(run.events) + run.stderr


def test_rows_longer_than_max_seq_len_are_refused_by_line_number(work):
    data = write_lines(
        work / "long.jsonl",
        [{"text": "a short row."}, {"text": "a short row."}, {"text": " ".join([CANARY] * 20)}, {"text": "short."}],
    )
    spec = spec_for(work, "long", dataset=str(data), hyperparameters={**HYPERPARAMETERS, "max_seq_len": 32})
    run = run_job("finetune", spec, work / "long-run")
    assert run.code == EXIT_BAD_INPUT
    error = run.one("error")
    assert (error["cause"], error["line"], error["field"]) == ("row_too_long", 3, "hyperparameters.max_seq_len")
    assert CANARY not in json.dumps(run.events) + run.stderr
    assert not (work / "long" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("change", "cause", "field"),
    [
        ({"hyperparameters": {"learning_rate": "fast"}}, "bad_input", "hyperparameters.learning_rate"),
        ({"method": "dpo"}, "bad_input", "method"),
        ({"epochs": 3}, "bad_input", "epochs"),
        ({"dataset": "empty.jsonl"}, "empty_dataset", "dataset"),
        ({"base_model": "no-tokenizer"}, "no_tokenizer", "base_model"),
    ],
)
def test_a_bad_spec_is_refused_with_the_field_before_anything_is_written(work, change, cause, field):
    (work / "empty.jsonl").write_text("\n")
    (work / "no-tokenizer").mkdir(exist_ok=True)
    (work / "no-tokenizer" / "config.json").write_text((work / "tiny" / "config.json").read_text())
    spec = spec_for(work, "refused", **change)
    for name in ("dataset", "base_model"):
        if name in change:
            spec[name] = str(work / change[name])
    run = run_job("finetune", spec, work / "refused-run")
    assert run.code == EXIT_BAD_INPUT
    error = run.one("error")
    assert (error["cause"], error["field"]) == (cause, field), error
    assert not (work / "refused").exists()

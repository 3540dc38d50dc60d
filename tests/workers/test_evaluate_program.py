"""workers/jobs/evaluate.py as a real program in the ML environment, on the tiny random Llama: its perplexity is
the plain computation's, two copies of one model agree, a sliding window scores every token but the first once,
multiple choice and exact match score a known answer key, no example text reaches the output, and bad input is
refused naming the field. Every stdout line is a protocol event (tests/support/job_program.py asserts it).

Timings on 2 shared cores (busy): making the tiny model and the reference probe 12-25 s, each of the four
evaluate runs 4-10 s, the tokenizer mismatch 6-9 s (tokenizers load, no model), the other bad-input tests stop
before torch loads (< 1 s together)."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.job_program import run_job
from tests.support.serve_process import ROOT, make_model, ml_env, ml_python
from workers.jobs.evaluate_spec import DEFAULT_PERPLEXITY_TEXT
from workers.jobs.protocol import EXIT_BAD_INPUT, EXIT_OK, EXIT_STOPPED

CONTEXT = 64
STRIDE = 24  # the sliding-window test's
MAX_TOKENS = 5 * CONTEXT + 1  # five whole windows at stride == context: exactly the plain chunked computation
# Markers no library prints: if one shows up in the output, the program leaked an example.
PROMPTS = [f"Zqxv confidential question {n} wplk:" for n in range(8)]
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run the evaluate program")
    return tmp_path_factory.mktemp("evaluate")


@pytest.fixture(scope="module")
def model(work) -> Path:
    return make_model(work / "tiny")


@pytest.fixture(scope="module")
def probe(work, model) -> dict:
    spec = {
        "model": str(model),
        "text": str(DEFAULT_PERPLEXITY_TEXT),
        "context": CONTEXT,
        "stride": STRIDE,
        "max_tokens": MAX_TOKENS,
        "prompts": PROMPTS,
        "max_new_tokens": NEW_TOKENS,
    }
    out = subprocess.run(
        [ml_python(), str(ROOT / "tests" / "support" / "evaluate_probe.py"), json.dumps(spec)],
        env=ml_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def assert_no_example_text(run, strings: list[str]) -> None:
    output = json.dumps(run.events) + run.stderr
    leaked = [s for s in strings if len(s.strip()) >= 5 and s.strip() in output]
    assert not leaked, "example text in the program's output"


def test_perplexity_is_the_plain_computation_and_copies_agree_and_a_known_answer_key_scores_1(work, model, probe):
    # Each question's choices, the model's most likely next token first, then shuffled by a fixed rotation.
    rows = []
    for n, (prompt, choices) in enumerate(zip(PROMPTS, probe["choices"], strict=True)):
        turn = n % len(choices)
        rotated = choices[turn:] + choices[:turn]
        rows.append({"question": prompt, "options": rotated, "answer": rotated.index(choices[0])})
    task = write_jsonl(work / "mc.jsonl", rows)
    spec = {
        "models": [{"id": "artifact-1", "path": str(model)}, {"id": "artifact-1-copy", "path": str(model)}],
        "perplexity": {"path": None, "context_length": CONTEXT, "stride": CONTEXT, "max_tokens": MAX_TOKENS},
        "task": {
            "path": str(task),
            "kind": "multiple_choice",
            "prompt_field": "question",
            "expected_field": "answer",
            "choices_field": "options",
        },
        "batch_size": 3,  # windows and choices spill over batch edges
    }
    run = run_job("evaluate", spec, work / "run-mc")
    assert run.code == EXIT_OK, (run.events[-3:], run.stderr[-3000:])
    result = run.one("result")
    first, copy = result["models"]["artifact-1"], result["models"]["artifact-1-copy"]
    assert first["perplexity"] == pytest.approx(math.exp(probe["nll"]), rel=1e-3)
    assert first["tokens"] == probe["scored"] == MAX_TOKENS - 1
    assert first["perplexity"] == copy["perplexity"] and first["tokens"] == copy["tokens"]
    assert first["accuracy"] == copy["accuracy"] == 1.0 and first["examples"] == len(PROMPTS)
    data = result["perplexity_data"]
    assert (data["tokens"], data["context_length"], data["stride"]) == (probe["tokens"], CONTEXT, CONTEXT)
    assert len(data["sha256"]) == 64 and result["task"]["examples"] == len(PROMPTS)
    assert [m["model"] for m in run.of("metric")] == ["artifact-1", "artifact-1-copy"]
    assert run.of("progress")[-1]["step"] == run.of("progress")[-1]["total"]
    assert_no_example_text(run, PROMPTS + [c for choices in probe["choices"] for c in choices])


def test_a_sliding_window_scores_every_token_once_and_wrong_keys_count_as_wrong(work, model, probe):
    # The answer key is wrong for 3 of 8 questions: accuracy 5/8.
    rows = [
        {"prompt": prompt, "choices": choices, "expected": choices[1] if n < 3 else choices[0]}
        for n, (prompt, choices) in enumerate(zip(PROMPTS, probe["choices"], strict=True))
    ]
    task = write_jsonl(work / "mc-wrong.jsonl", rows)
    spec = {
        "models": [{"id": "tiny", "path": str(model)}],
        "perplexity": {"context_length": CONTEXT, "stride": STRIDE, "max_tokens": MAX_TOKENS},
        "task": {"path": str(task), "kind": "multiple_choice"},
        "batch_size": 4,
    }
    run = run_job("evaluate", spec, work / "run-sliding")
    assert run.code == EXIT_OK, (run.events[-3:], run.stderr[-3000:])
    figures = run.one("result")["models"]["tiny"]
    assert figures["tokens"] == MAX_TOKENS - 1
    assert figures["perplexity"] == pytest.approx(math.exp(probe["sliding_nll"]), rel=1e-3)
    assert figures["accuracy"] == 5 / 8 and figures["correct"] == 5


def test_exact_match_compares_greedy_answers_without_showing_them(work, model, probe):
    rows = [
        {"prompt": prompt, "expected": f"  {answer}  " if n < 6 else answer + " and more"}
        for n, (prompt, answer) in enumerate(zip(PROMPTS, probe["greedy"], strict=True))
    ]
    task = write_jsonl(work / "exact.jsonl", rows)
    spec = {
        "models": [{"id": "tiny", "path": str(model)}],
        "task": {"path": str(task), "kind": "exact_match", "max_new_tokens": NEW_TOKENS, "limit": 7},
        "batch_size": 4,  # left-padded batches answer as one prompt at a time does
    }
    run = run_job("evaluate", spec, work / "run-exact")
    assert run.code == EXIT_OK, (run.events[-3:], run.stderr[-3000:])
    figures = run.one("result")["models"]["tiny"]
    assert (figures["correct"], figures["examples"]) == (6, 7)
    assert run.one("result")["perplexity_data"] is None
    assert_no_example_text(run, PROMPTS + probe["greedy"])


def bad_input(work: Path, name: str, spec: dict) -> dict:
    run = run_job("evaluate", spec, work / name, timeout=120)
    assert run.code == EXIT_BAD_INPUT, (run.events[-3:], run.stderr[-3000:])
    assert not run.of("result")
    return run.one("error")


def test_bad_input_is_refused_naming_the_field(work, model):
    error = bad_input(work, "bad-none", {"models": [], "perplexity": {}})
    assert error["field"] == "models"
    error = bad_input(work, "bad-dir", {"models": [{"id": "x", "path": str(work / "nothing")}], "perplexity": {}})
    assert error["field"] == "models[0].path" and "not a model directory" in error["message"]
    task = write_jsonl(work / "no-expected.jsonl", [{"prompt": "a", "expected": "b"}, {"prompt": "Zqxv c"}])
    spec = {"models": [{"id": "tiny", "path": str(model)}], "task": {"path": str(task), "kind": "exact_match"}}
    error = bad_input(work, "bad-task", spec)
    assert (error["field"], error["line"]) == ("task.expected_field", 2)
    assert "no field expected" in error["message"] and "Zqxv" not in error["message"]
    rows = write_jsonl(work / "heldout.jsonl", [{"text": "Zqxv one"}, {"txt": "Zqxv two"}])
    spec = {"models": [{"id": "tiny", "path": str(model)}], "perplexity": {"path": str(rows)}}
    error = bad_input(work, "bad-text", spec)
    assert (error["field"], error["line"]) == ("perplexity.path", 2) and "Zqxv" not in error["message"]


def test_models_with_different_tokenizers_are_not_compared_on_perplexity(work, model):
    # The same model, its tokenizer without the BOS token: other ids for the same text.
    other = work / "tiny-no-bos"
    if not other.exists():
        shutil.copytree(model, other)
        tokenizer = json.loads((other / "tokenizer.json").read_text())
        tokenizer["post_processor"] = None
        (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    spec = {
        "models": [{"id": "tiny", "path": str(model)}, {"id": "tiny-no-bos", "path": str(other)}],
        "perplexity": {"max_tokens": 256},
    }
    error = bad_input(work, "bad-tokenizer", spec)
    assert error["field"] == "models[1].path" and error["cause"] == "tokenizer_mismatch"
    assert "share a tokenizer" in error["message"]


def test_sigterm_stops_between_batches(work, model):
    spec = {
        "models": [{"id": "tiny", "path": str(model)}, {"id": "tiny-again", "path": str(model)}],
        "perplexity": {"context_length": 512, "stride": 256},
        "batch_size": 1,  # dozens of batches: the signal lands while there is work left
    }
    signalled = []

    def on_event(event, process):
        if event["type"] == "progress" and not signalled:
            signalled.append(event["step"])
            process.send_signal(signal.SIGTERM)

    run = run_job("evaluate", spec, work / "run-stop", on_event=on_event)
    assert run.code == EXIT_STOPPED, (run.events[-3:], run.stderr[-3000:])
    assert not run.of("result") and not run.of("metric")
    assert "Stopped on request" in run.of("log")[-1]["message"]


# The rows a fine-tune holds out, by a direct datasets call and by the fine-tune's own build_datasets: the
# evaluate job must score exactly these (workers/jobs/heldout_split.py is the code both jobs share).
HELD_OUT_REFERENCE = """
import json, sys
from types import SimpleNamespace
import datasets
from transformers import AutoTokenizer
from workers.jobs.finetune_data import scan_dataset
from workers.jobs.finetune_train import build_datasets
path, model, out, fraction, seed, examples = sys.argv[1:7]
rows = [json.loads(line) for line in open(path)]
direct = datasets.Dataset.from_list(rows).train_test_split(test_size=float(fraction), seed=int(seed), shuffle=True)
spec = SimpleNamespace(dataset=path, output_dir=out, eval_fraction=float(fraction), hyperparameters={"seed": int(seed)})
_train, finetune_eval = build_datasets(spec, scan_dataset(path))
assert list(finetune_eval["text"]) == list(direct["test"]["text"]), "the fine-tune's eval rows differ"
text = "\\n\\n".join(direct["test"]["text"])
positions = datasets.Dataset.from_dict({"i": list(range(int(examples)))})
task = positions.train_test_split(test_size=float(fraction), seed=int(seed), shuffle=True)["test"]["i"]
ids = AutoTokenizer.from_pretrained(model)(text, add_special_tokens=True)["input_ids"]
print(json.dumps({"ids": ids, "rows": len(direct["test"]), "task": list(task)}))
"""


def test_a_split_scores_exactly_the_rows_a_finetune_holds_out(work, model, probe):
    from workers.jobs.evaluate_data import token_ids_sha256

    texts = [f"Zqxv held row {n} tells of river {n * 7} and hill {n * 3}." for n in range(20)]
    data = write_jsonl(work / "split-text.jsonl", [{"text": t} for t in texts])
    # Right answers on even rows only: the accuracy says which examples were scored.
    rows = [
        {"prompt": prompt, "choices": choices, "expected": choices[0] if n % 2 == 0 else choices[1]}
        for n, (prompt, choices) in enumerate(zip(PROMPTS, probe["choices"], strict=True))
    ]
    task = write_jsonl(work / "split-mc.jsonl", rows)
    split = {"eval_fraction": 0.25, "seed": 11}
    spec = {
        "models": [{"id": "tiny", "path": str(model)}],
        "perplexity": {"path": str(data), "context_length": CONTEXT, "stride": CONTEXT, "split": split},
        "task": {"path": str(task), "kind": "multiple_choice", "split": split},
    }
    run = run_job("evaluate", spec, work / "run-split")
    assert run.code == EXIT_OK, (run.events[-3:], run.stderr[-3000:])
    out = subprocess.run(
        [ml_python(), "-c", HELD_OUT_REFERENCE, str(data), str(model), str(work / "ft"), "0.25", "11", str(len(rows))],
        env=ml_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    reference = json.loads(out.stdout.splitlines()[-1])
    result = run.one("result")
    scored = result["perplexity_data"]
    assert (scored["rows"], scored["split"]) == (reference["rows"], split) and reference["rows"] == 5
    assert (scored["tokens"], scored["sha256"]) == (len(reference["ids"]), token_ids_sha256(reference["ids"]))
    assert result["task"]["split"] == split and result["task"]["examples"] == len(reference["task"]) == 2
    assert result["models"]["tiny"]["correct"] == sum(n % 2 == 0 for n in reference["task"])
    assert_no_example_text(run, texts + PROMPTS)


def test_a_split_with_no_rows_to_spare_or_no_rows_at_all_is_refused(work, model):
    one = write_jsonl(work / "one-row.jsonl", [{"text": "Zqxv only row"}])
    split = {"eval_fraction": 0.1, "seed": 42}
    spec = {"models": [{"id": "tiny", "path": str(model)}], "perplexity": {"path": str(one), "split": split}}
    error = bad_input(work, "bad-split-rows", spec)
    assert error["field"] == "perplexity.split" and "1 rows" in error["message"] and "Zqxv" not in error["message"]
    spec["perplexity"] = {"path": None, "split": split}
    error = bad_input(work, "bad-split-text", spec)
    assert error["field"] == "perplexity.split" and "plain text" in error["message"]

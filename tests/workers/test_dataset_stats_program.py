"""workers/jobs/dataset_stats.py as a real program in the ML environment, started as the console starts it
(`python -m workers.jobs.dataset_stats --spec FILE`): the figures on a small generated dataset in each format
against the trainer's own token counting and datasets' own split, no row content in any output, the run under
an address-space cap a third of the file's size, a stop on SIGTERM, bad input refused by line and field.

The cap. Measured on the 2-CPU development machine (transformers 5.17 without torch, tokenizers 0.23): the
program with the tiny model's tokenizer loaded needs about 152 MiB of address space (it runs at 152 MiB, fails
at 144; without a tokenizer it runs in 24 MiB). CAP is 192 MiB: 40 MiB for the batches. The file is over
3 x CAP (~590 MiB of JSONL, 38,000 rows): each row's prompt and completion are short and a 16 KB `meta` column
carries the bulk, which the program reads, parses and types but does not tokenize (the tiny BPE tokenizer
runs at ~1 MB/s on a shared core, so a file of tokenized text this big would take minutes; what a batch of
tokens costs does not grow with the file). Under the same cap, reading the file whole fails.

Timings on 2 shared cores: tiny model ~8 s, the expected figures ~10 s, each format run ~3-6 s (loading
transformers), the capped run ~15 s plus ~5 s to write the file, the stop ~5 s, bad input < 1 s each."""

from __future__ import annotations

import csv
import json
import math
import os
import resource
import signal
import subprocess
from bisect import bisect_right
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.job_program import JOB_ENV, JobRun, run_job
from tests.support.serve_process import ROOT, make_model, ml_env, ml_python
from workers.jobs.protocol import EXIT_BAD_INPUT, EXIT_OK, EXIT_STOPPED, parse_event

CANARY = "CANARY-5d41402abc4b2a76"
ROWS = 37  # an eval share of 0.1 is 3.7 rows: datasets rounds it up to 4
CAP = 192 << 20
WORDS = ["the", "model", "server", "tokens", "gpu", "memory", "cache", "batch", "answer", "question", "data", "layer"]
FIGURES = """
import json, sys
from datasets import Dataset
from transformers import AutoTokenizer
from workers.jobs.finetune_data import iter_records
from workers.jobs.finetune_train import _token_count
tokenizer, out = AutoTokenizer.from_pretrained(sys.argv[1]), {}
for name, shape in json.loads(sys.argv[2]).items():
    records = list(iter_records(name, shape))
    split = Dataset.from_list(records).train_test_split(test_size=0.1, seed=42, shuffle=True)
    out[name] = {"lengths": [_token_count(tokenizer, r) for r in records],
                 "train": len(split["train"]), "eval": len(split["test"])}
print(json.dumps(out))
"""


def _words(index: int, count: int) -> str:
    return " ".join(WORDS[(index * 7 + step * 3) % len(WORDS)] for step in range(count))


def _prompt_rows() -> list[dict]:
    return [
        {
            "prompt": _words(index, 2 + index % 17),
            "completion": f"{_words(index + 3, 1 + (index * 5) % 23)} {CANARY}",
            "id": index,
            "score": index / 4,
            "note": f"private {CANARY} {index}",
        }
        for index in range(ROWS)
    ]


def _chat_rows() -> list[dict]:
    return [
        {
            "messages": [
                {"role": "system", "content": "You answer briefly."},
                {"role": "user", "content": f"{_words(index, 3 + index % 11)} {CANARY}"},
                {"role": "assistant", "content": _words(index + 1, 1 + (index * 3) % 19)},
            ]
        }
        for index in range(ROWS)
    ]


def _write_formats(root: Path, rows: list[dict]) -> None:
    (root / "data.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "data.json").write_text(json.dumps(rows, indent=2))
    with open(root / "data.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    # Parquet needs pyarrow, which only the ML environment has; small row groups so it reads several.
    script = (
        "import json, sys, pyarrow as pa, pyarrow.parquet as pq; "
        "rows = [json.loads(line) for line in open(sys.argv[1])]; "
        "pq.write_table(pa.Table.from_pylist(rows), sys.argv[2], row_group_size=10)"
    )
    command = [ml_python(), "-c", script, str(root / "data.jsonl"), str(root / "data.parquet")]
    subprocess.run(command, check=True, env=ml_env(), cwd=ROOT, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run the dataset stats program")
    root = tmp_path_factory.mktemp("dataset-stats")
    make_model(root / "tiny")
    _write_formats(root, _prompt_rows())
    (root / "chat.jsonl").write_text("".join(json.dumps(row) + "\n" for row in _chat_rows()))
    return root


@pytest.fixture(scope="module")
def expected(work) -> dict:
    """Token lengths as the trainer counts them (finetune_train._token_count) and datasets' own split sizes."""
    files = {str(work / "data.jsonl"): "prompt_completion", str(work / "chat.jsonl"): "chat"}
    command = [ml_python(), "-c", FIGURES, str(work / "tiny"), json.dumps(files)]
    env = ml_env({**JOB_ENV, "HF_HOME": str(work / "hf")})
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return {shape: figures[name] for name, shape in files.items()}


def nearest_rank(lengths: list[int], p: int) -> int:
    ordered = sorted(lengths)
    return ordered[max(1, math.ceil(p * len(ordered) / 100)) - 1]


def assert_no_row_content(run: JobRun) -> None:
    assert CANARY not in json.dumps(run.events), "row content in the events"
    assert CANARY not in run.stderr, "row content in stderr"


def assert_lengths(figures: dict, lengths: list[int], tokenizer: str = "tiny") -> None:
    assert figures["tokenizer"] == tokenizer
    assert (figures["min"], figures["max"]) == (min(lengths), max(lengths))
    assert figures["mean"] == round(sum(lengths) / len(lengths), 2)
    assert [figures["p50"], figures["p90"], figures["p99"]] == [nearest_rank(lengths, p) for p in (50, 90, 99)]
    edges, counts = figures["bins"], figures["counts"]
    assert len(edges) == len(counts) + 1 and edges == sorted(set(edges))
    assert edges[0] <= min(lengths) and max(lengths) < edges[-1]
    assert sum(counts) == len(lengths)
    recounted = [0] * len(counts)
    for length in lengths:
        recounted[bisect_right(edges, length) - 1] += 1
    assert counts == recounted


TEXT_COLUMNS = {"prompt": "string", "completion": "string", "id": "int64", "score": "double", "note": "string"}
CSV_COLUMNS = dict.fromkeys(TEXT_COLUMNS, "string")  # CSV has no types; its cells are text


@pytest.mark.parametrize(
    ("fmt", "bins", "columns"),
    [
        ("jsonl", None, TEXT_COLUMNS),
        ("json", 5, TEXT_COLUMNS),
        ("csv", [10, 20, 30], CSV_COLUMNS),
        ("parquet", None, TEXT_COLUMNS),
    ],
)
def test_figures_match_the_trainers_token_counts_in_every_format_and_quote_no_row(work, expected, fmt, bins, columns):
    spec = {"dataset": str(work / f"data.{fmt}"), "format": fmt, "tokenizer": str(work / "tiny"), "bins": bins}
    run = run_job("dataset_stats", spec, work / f"run-{fmt}")
    assert run.code == EXIT_OK, (run.events[-3:], run.stderr[-3000:])
    result = run.one("result")
    assert result["rows"] == ROWS
    assert result["columns"] == columns
    assert result["shape"] == "prompt_completion"
    assert result["bytes"] == (work / f"data.{fmt}").stat().st_size
    figures = expected["prompt_completion"]
    assert_lengths(result["token_lengths"], figures["lengths"])
    if isinstance(bins, int):
        assert len(result["token_lengths"]["counts"]) <= bins
    if isinstance(bins, list):  # the edges asked for, widened to the data's ends
        edges, lengths = result["token_lengths"]["bins"], figures["lengths"]
        assert set(bins) <= set(edges) and set(edges) - set(bins) <= {min(lengths), max(lengths) + 1}
    split = {"train": figures["train"], "eval": figures["eval"], "seed": 42, "eval_fraction": 0.1}
    assert result["split"] == split == {**split, "train": ROWS - 4, "eval": 4}
    assert run.of("progress")[-1]["step"] == ROWS
    assert_no_row_content(run)


def test_chat_records_are_counted_through_the_chat_template_as_the_trainer_counts_them(work, expected):
    spec = {"dataset": str(work / "chat.jsonl"), "format": "jsonl", "tokenizer": str(work / "tiny"), "seed": 42}
    run = run_job("dataset_stats", spec, work / "run-chat")
    assert run.code == EXIT_OK, (run.events[-3:], run.stderr[-3000:])
    result = run.one("result")
    assert result["shape"] == "chat" and result["rows"] == ROWS
    assert result["columns"] == {"messages": "list<item: struct<role: string, content: string>>"}
    assert_lengths(result["token_lengths"], expected["chat"]["lengths"])
    assert_no_row_content(run)


def test_without_a_tokenizer_the_stats_have_no_token_lengths(work):
    spec = {"dataset": str(work / "data.jsonl"), "format": "jsonl", "tokenizer": None, "eval_fraction": 0.25}
    run = run_job("dataset_stats", spec, work / "run-no-tokenizer")
    assert run.code == EXIT_OK, (run.events[-3:], run.stderr[-3000:])
    result = run.one("result")
    assert result["rows"] == ROWS and result["token_lengths"] is None
    assert result["split"] == {"train": ROWS - 10, "eval": 10, "seed": 42, "eval_fraction": 0.25}


# -- the memory claim -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(work):
    """A JSONL file over 3 x CAP bytes, written by repeating one block of 1,000 rows; removed afterwards."""
    block = "".join(
        json.dumps({"prompt": _words(index, 4 + index % 9), "completion": _words(index + 1, 3), "meta": "m" * 16000})
        + "\n"
        for index in range(1000)
    ).encode()
    repeats = math.ceil(3 * CAP / len(block))
    path = work / "big.jsonl"
    with open(path, "wb") as handle:
        for _ in range(repeats):
            handle.write(block)
    yield path, repeats * 1000
    path.unlink()


def _capped(command: list[str], cap: int, **kwargs) -> subprocess.CompletedProcess:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return subprocess.run(command, preexec_fn=limit, cwd=ROOT, capture_output=True, text=True, **kwargs)


def test_stats_of_a_file_three_times_the_address_space_cap(work, big):
    path, rows = big
    assert path.stat().st_size >= 3 * CAP
    spec_file = work / "big-spec.json"
    spec_file.write_text(json.dumps({"dataset": str(path), "format": "jsonl", "tokenizer": str(work / "tiny")}))
    command = [ml_python(), "-m", "workers.jobs.dataset_stats", "--spec", str(spec_file)]
    done = _capped(command, CAP, env=ml_env(JOB_ENV), timeout=300)
    events = [parse_event(line) for line in done.stdout.splitlines()]
    assert None not in events, "every stdout line is an event"
    run = JobRun(code=done.returncode, events=events, stderr=done.stderr)
    assert run.code == EXIT_OK, (run.events[-3:], run.stderr[-3000:])
    result = run.one("result")
    assert result["rows"] == rows and result["bytes"] == path.stat().st_size
    assert sum(result["token_lengths"]["counts"]) == rows
    assert result["columns"] == {"prompt": "string", "completion": "string", "meta": "string"}
    assert any(0 < event["step"] < rows for event in run.of("progress")), "rows done are reported on the way"
    # The cap bites: the same file read whole under it runs out of memory.
    whole = _capped([ml_python(), "-c", f"open({str(path)!r}, 'rb').read()"], CAP, env=ml_env(), timeout=60)
    assert whole.returncode != 0 and "MemoryError" in whole.stderr


def test_sigterm_stops_the_pass_with_nothing_written(work, big):
    path, _ = big

    def stop_at_start(event: dict, process: subprocess.Popen) -> None:
        if event["type"] == "progress" and event["step"] == 0:
            os.kill(process.pid, signal.SIGTERM)

    spec = {"dataset": str(path), "format": "jsonl", "tokenizer": str(work / "tiny")}
    run = run_job("dataset_stats", spec, work / "run-stop", on_event=stop_at_start)
    assert run.code == EXIT_STOPPED, (run.events[-3:], run.stderr[-3000:])
    assert not run.of("result") and not run.of("error")
    assert "Stopped on request" in run.of("log")[-1]["message"]


# -- bad input ----------------------------------------------------------------------------------------------------

BROKEN_JSONL = f'{{"text": "one"}}\n{{"text": "two"}}\n{{"text": "{CANARY} unterminated\n{{"text": "four"}}\n'
BROKEN_JSON = f'[\n  {{"text": "one"}},\n  {{"text": "two"}},\n  {{"text": {CANARY}}}\n]\n'
BROKEN_CSV = f"prompt,completion\nhello,world\n{CANARY},x,extra\n"
MIXED_SHAPES = f'{{"text": "one"}}\n{{"prompt": "{CANARY}", "completion": "x"}}\n'
EMPTY_COMPLETION = f'{{"prompt": "{CANARY}", "completion": "fine"}}\n{{"prompt": "{CANARY}", "completion": " "}}\n'


@pytest.mark.parametrize(
    ("name", "content", "fmt", "line"),
    [
        ("broken.jsonl", BROKEN_JSONL, "jsonl", 3),
        ("broken.json", BROKEN_JSON, "json", 4),
        ("broken.csv", BROKEN_CSV, "csv", 3),
        ("mixed.jsonl", MIXED_SHAPES, "jsonl", 2),
        ("empty.jsonl", EMPTY_COMPLETION, "jsonl", 2),
    ],
    ids=["jsonl-not-json", "json-array-element", "csv-width", "mixed-shapes", "empty-completion"],
)
def test_a_malformed_record_is_refused_by_line_without_quoting_it(work, name, content, fmt, line):
    (work / name).write_text(content)
    run = run_job("dataset_stats", {"dataset": str(work / name), "format": fmt}, work / f"run-{name}")
    assert run.code == EXIT_BAD_INPUT, (run.events[-3:], run.stderr[-3000:])
    error = run.one("error")
    assert error["cause"] == "bad_record" and error["line"] == line and error["field"] == "dataset"
    assert f"Line {line} of {name}" in error["message"]
    assert not run.of("result")
    assert_no_row_content(run)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dataset": "/nowhere/data.jsonl"}, "dataset"),
        ({"format": "xml"}, "format"),
        ({"tokenizer": "/nowhere"}, "tokenizer"),
        ({"eval_fraction": 0.5}, "eval_fraction"),
        ({"bins": [10, 5]}, "bins"),
        ({"rows": 3}, "rows"),
    ],
)
def test_a_wrong_spec_is_refused_by_field_before_reading(work, change, field):
    spec = {"dataset": str(work / "data.jsonl"), "format": "jsonl", "tokenizer": str(work / "tiny"), **change}
    run = run_job("dataset_stats", spec, work / f"run-spec-{field}")
    assert run.code == EXIT_BAD_INPUT
    assert run.one("error")["field"] == field
    assert not run.of("progress")

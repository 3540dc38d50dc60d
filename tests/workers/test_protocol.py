"""The job-program contract (workers/jobs/protocol.py) and directory manifests (workers/jobs/manifest.py): both
standard library only, so these run in the console's environment, programs included (no torch needed)."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support.serve_process import ROOT
from workers.jobs.manifest import read_manifest, verify_manifest, write_manifest
from workers.jobs.protocol import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STOPPED,
    Events,
    parse_event,
)


def test_every_event_the_emitter_writes_parses_back():
    stream = io.StringIO()
    events = Events(stream)
    events.log("loading")
    events.progress(3, 10, eta_seconds=7.5)
    events.metric(step=3, loss=1.25, learning_rate=2e-4)
    events.checkpoint("/ckpt/checkpoint-3", 3, {"files": []})
    events.result(kind="adapter", path="/out/adapter")
    events.error("bad_record", "Line 4 of data.jsonl: not valid JSON.", "Fix the line.", line=4, field="dataset")
    parsed = [parse_event(line) for line in stream.getvalue().splitlines()]
    assert [event["type"] for event in parsed] == ["log", "progress", "metric", "checkpoint", "result", "error"]
    assert parsed[2]["loss"] == 1.25 and parsed[5]["line"] == 4 and all("time" in event for event in parsed)


def test_a_diverged_metric_is_null_not_a_broken_line():
    stream = io.StringIO()
    Events(stream).metric(step=1, loss=float("nan"), grad_norm=float("inf"))
    assert parse_event(stream.getvalue())["loss"] is None


@pytest.mark.parametrize(
    "line",
    [
        "",
        "Loading weights: 100%",
        "{not json",
        "[1, 2]",
        '{"type": "surprise", "message": "x"}',
        '{"type": "progress", "step": 1}',  # no total
        '{"type": "metric", "step": true}',
        '{"type": "error", "message": "no cause"}',
    ],
)
def test_lines_that_are_not_events_parse_to_none(line):
    assert parse_event(line) is None


def test_parse_event_reads_bytes_too():
    assert parse_event(b'{"type": "log", "message": "hi"}\n') == {"type": "log", "message": "hi"}


PROGRAM = """
import os, sys, time
from workers.jobs.protocol import BadInput, JobFailed, Stopped, run_program

def run(spec, events, stop):
    print("a library printing to stdout")
    os.write(1, b"and C code writing to fd 1\\n")
    outcome = spec["outcome"]
    if outcome == "bad":
        raise BadInput("Line 7 of data.jsonl: not valid JSON.", cause="bad_record", line=7, field="dataset")
    if outcome == "fail":
        raise JobFailed("The disk is full.", cause="disk_full", next_step="Free space.")
    if outcome == "crash":
        raise RuntimeError("unexpected")
    if outcome == "steps":
        for step in range(1, 10_000):
            time.sleep(0.01)
            events.progress(step, None)
            if stop.requested:
                events.checkpoint(f"/ckpt/checkpoint-{step}", step, {"files": []})
                raise Stopped
    events.result(answer=42)

sys.exit(run_program(run, prog="demo"))
"""


def start(tmp_path, argv: list[str]) -> subprocess.Popen:
    program = tmp_path / "demo.py"
    program.write_text(textwrap.dedent(PROGRAM))
    return subprocess.Popen(
        [sys.executable, str(program), *argv],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_demo(tmp_path, spec: dict | None, argv: list[str] | None = None) -> tuple[int, list[dict], str]:
    spec_file = tmp_path / "spec.json"
    if spec is not None:
        spec_file.write_text(json.dumps(spec))
    process = start(tmp_path, argv if argv is not None else ["--spec", str(spec_file)])
    stdout, stderr = process.communicate(timeout=60)
    events = [parse_event(line) for line in stdout.splitlines()]
    assert None not in events, stdout  # stdout holds events only: strays went to stderr
    return process.returncode, events, stderr


def test_stdout_carries_only_events_and_stray_output_goes_to_stderr(tmp_path):
    code, events, stderr = run_demo(tmp_path, {"outcome": "ok"})
    assert code == EXIT_OK and events[-1]["type"] == "result" and events[-1]["answer"] == 42
    assert "a library printing to stdout" in stderr and "and C code writing to fd 1" in stderr


@pytest.mark.parametrize(
    ("outcome", "code", "cause"),
    [("bad", EXIT_BAD_INPUT, "bad_record"), ("fail", EXIT_FAILED, "disk_full"), ("crash", EXIT_FAILED, "failed")],
)
def test_each_failure_is_one_error_event_and_its_exit_code(tmp_path, outcome, code, cause):
    exit_code, events, stderr = run_demo(tmp_path, {"outcome": outcome})
    assert exit_code == code
    assert [event["type"] for event in events] == ["error"] and events[0]["cause"] == cause
    if outcome == "bad":
        assert events[0]["line"] == 7 and events[0]["field"] == "dataset"
    if outcome == "crash":
        assert "Traceback" in stderr and "RuntimeError: unexpected" in events[0]["message"]


@pytest.mark.parametrize(("spec", "argv"), [(None, None), ("[1]", None), (None, ["--nonsense"])])
def test_a_missing_or_wrong_spec_is_bad_input_with_an_error_event(tmp_path, spec, argv):
    if spec is not None:
        (tmp_path / "spec.json").write_text(spec)
    code, events, _ = run_demo(tmp_path, None, argv)
    assert code == EXIT_BAD_INPUT and events[-1]["type"] == "error" and events[-1]["cause"] == "bad_input"


def test_sigterm_is_a_request_honoured_at_the_next_step_after_a_checkpoint(tmp_path):
    (tmp_path / "spec.json").write_text(json.dumps({"outcome": "steps"}))
    process = start(tmp_path, ["--spec", str(tmp_path / "spec.json")])
    first = parse_event(process.stdout.readline())
    assert first["type"] == "progress"
    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=30)
    events = [parse_event(line) for line in stdout.splitlines()]
    assert process.returncode == EXIT_STOPPED
    assert events[-1]["type"] == "checkpoint" and events[-1]["step"] >= first["step"]


def test_a_manifest_lists_every_file_and_verification_finds_any_change(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 1000)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "state.json").write_text("{}")
    manifest = write_manifest(tmp_path, step=5, metrics={"loss": 1.5}, lineage={"seed": 1})
    assert [entry["path"] for entry in manifest["files"]] == ["sub/state.json", "weights.bin"]
    assert read_manifest(tmp_path) == manifest and verify_manifest(tmp_path) == []

    (tmp_path / "weights.bin").write_bytes(b"\x01" * 1000)
    (tmp_path / "extra.txt").write_text("x")
    (tmp_path / "sub" / "state.json").unlink()
    problems = verify_manifest(tmp_path)
    assert problems == [
        "sub/state.json is missing",
        "weights.bin does not match its sha256",
        "extra.txt is not in the manifest",
    ]
    assert verify_manifest(tmp_path / "sub") == [f"{tmp_path / 'sub' / 'manifest.json'} is missing or unreadable"]


def test_the_protocol_imports_only_the_standard_library():
    code = (
        "import sys; before = set(sys.modules); import workers.jobs.protocol, workers.jobs.manifest, "
        "workers.jobs.finetune_spec, workers.jobs.finetune_data; "
        "print(sorted(m.split('.')[0] for m in set(sys.modules) - before))"
    )
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.replace("'", '"')))
    assert loaded - set(sys.stdlib_module_names) == {"workers"}
    assert time.monotonic() - started < 10

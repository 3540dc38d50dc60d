"""Run a workers/jobs program under the job-program contract (workers/jobs/protocol.py) as a real subprocess
in the ML environment: write its spec, read its events line by line, optionally act on them (send SIGTERM),
and return the exit code, the events and stderr. Every stdout line must be an event."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.serve_process import ROOT, ml_env, ml_python
from workers.jobs.protocol import parse_event

# Tiny models train several times faster on one thread than on two shared cores, and the thread count
# changes float sums: runs compared step by step must share it.
JOB_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_DATASETS_OFFLINE": "1"}


@dataclass
class JobRun:
    code: int
    events: list[dict] = field(default_factory=list)
    stderr: str = ""

    def of(self, kind: str) -> list[dict]:
        return [event for event in self.events if event["type"] == kind]

    def one(self, kind: str) -> dict:
        found = self.of(kind)
        assert len(found) == 1, (kind, self.events[-5:], self.stderr[-3000:])
        return found[0]

    def losses(self) -> dict[int, float]:
        return {event["step"]: event["loss"] for event in self.of("metric") if "loss" in event}


def run_job(
    kind: str,
    spec: dict,
    work: Path,
    *,
    env: dict | None = None,
    on_event: Callable[[dict, subprocess.Popen], None] | None = None,
    timeout: float = 300,
) -> JobRun:
    work.mkdir(parents=True, exist_ok=True)
    spec_file = work / f"{kind}-spec.json"
    spec_file.write_text(json.dumps(spec))
    stderr_path = work / f"{kind}-stderr.txt"
    home = work / "home"
    home.mkdir(exist_ok=True)
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [ml_python(), "-m", f"workers.jobs.{kind}", "--spec", str(spec_file)],
            env=ml_env({"HOME": str(home), "HF_HOME": str(home / "hf"), **JOB_ENV, **(env or {})}),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        run = JobRun(code=-1)
        # A hung program must fail the test, not the suite: kill it when the time is up.
        watchdog = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
        watchdog.start()
        try:
            for line in process.stdout:
                event = parse_event(line)
                assert event is not None, f"not an event on stdout: {line!r}"
                run.events.append(event)
                if on_event:
                    on_event(event, process)
            run.code = process.wait(timeout)
        finally:
            watchdog.cancel()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    run.stderr = stderr_path.read_text()
    return run

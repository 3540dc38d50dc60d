"""The fault matrix under `make bench`: every test marked `fault` with FAULT_MODE=bench (20 trials each,
the long outages), then one figure per fault from the records the tests leave (tests/faults/harness.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from bench.common import ROOT, Figure
from tests.faults.harness import REPORT_DIR


def run() -> list[Figure]:
    for old in REPORT_DIR.glob("*.json"):
        old.unlink()
    env = {**os.environ, "FAULT_MODE": "bench", "DATABASE_URL": os.environ.get("BENCH_GIVEN_DATABASE_URL", "")}
    completed = subprocess.run(  # noqa: S603 - our own test suite
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "fault", "tests"],
        cwd=ROOT,
        env=env,
        check=False,
    )
    figures = []
    for path in sorted(REPORT_DIR.glob("*.json")):
        record = json.loads(path.read_text())
        recover = record["recover_max_s"]
        note = f"{record['survived']}/{record['injected']} survived; {record['must_hold']}"
        if recover is not None:
            note += f"; slowest recovery {recover:.1f} s"
        figures.append(
            Figure(f"fault_{record['key']}_survived", record["survived"] / max(1, record["injected"]), "of trials", ">=", 1.0, note)
        )
    if completed.returncode and not figures:
        figures.append(Figure("fault_tests_ran", 0, "records", ">=", 1, f"pytest exited {completed.returncode}"))
    return figures

"""The fault matrix under `make bench`: every test marked `fault` with FAULT_MODE=bench (the long outages, random
moments; BENCH_FAULT_TRIALS trials each, 20 under `make reliability`), then one figure per fault from the records the
tests leave (tests/faults/harness.py)."""

from __future__ import annotations

import json
import os

from bench.common import Figure, run_pytest
from tests.faults.harness import REPORT_DIR

BENCH_FAULT_TRIALS = 2


def run() -> list[Figure]:
    for old in REPORT_DIR.glob("*.json"):
        old.unlink()
    # 20 trials of every fault with the long outages take hours (the agent's 2-minute cut alone ~50 min):
    # `make bench` (45 minutes for everything) runs BENCH_FAULT_TRIALS of each, `make reliability` all 20.
    trials = os.environ.get("FAULT_REPETITIONS") or str(BENCH_FAULT_TRIALS)
    outcomes = run_pytest("fault", {"FAULT_MODE": "bench", "FAULT_REPETITIONS": trials})
    figures = []
    for path in sorted(REPORT_DIR.glob("*.json")):
        record = json.loads(path.read_text())
        recover = record["recover_max_s"]
        note = f"{record['survived']}/{record['injected']} survived; {record['must_hold']}"
        if recover is not None:
            note += f"; slowest recovery {recover:.1f} s"
        share = record["survived"] / max(1, record["injected"])
        figures.append(Figure(f"fault_{record['key']}_survived", share, "of trials", ">=", 1.0, note))
        figures += [Figure(**figure) for figure in record.get("figures", [])]
    # A fault test that failed before it could save its record still counts.
    for name, passed in sorted(outcomes.items()):
        if not passed:
            figures.append(Figure(f"fault_test_{name.rsplit('::', 1)[1]}", 0, "passed", ">=", 1, name))
    if not outcomes:
        figures.append(Figure("fault_tests_ran", 0, "tests", ">=", 1, "pytest collected none"))
    return figures

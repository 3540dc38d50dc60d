"""The fault matrix under `make bench`: every test marked `fault` with FAULT_MODE=bench (20 trials each,
the long outages), then one figure per fault from the records the tests leave (tests/faults/harness.py)."""

from __future__ import annotations

import json

from bench.common import Figure, run_pytest
from tests.faults.harness import REPORT_DIR


def run() -> list[Figure]:
    for old in REPORT_DIR.glob("*.json"):
        old.unlink()
    outcomes = run_pytest("fault", {"FAULT_MODE": "bench"})
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

"""The long measurements `make test` leaves out (tests marked `heavy`): the quality a quantization costs on a
trained model, the small model's serving sweep. Each test's own assertions are its goals; one line per test."""

from __future__ import annotations

from bench.common import Figure, run_pytest


def run() -> list[Figure]:
    outcomes = run_pytest("heavy")
    figures = [
        Figure(f"heavy_{name.rsplit('::', 1)[1]}", float(passed), "passed", ">=", 1, name)
        for name, passed in sorted(outcomes.items())
    ]
    return figures or [Figure("heavy_tests_ran", 0, "tests", ">=", 1, "pytest collected none")]

"""The reliability report `make bench` prints and keeps: every fault with injected / survived / time to
recover, every figure with its goal, met or MISSED."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import ROOT, Figure
from tests.faults.harness import REPORT_DIR

REPORT = ROOT / "test-artifacts" / "reliability-report.md"


def write(figures: list[Figure]) -> Path:
    lines = ["# Reliability report", "", "## Faults", ""]
    lines += ["| fault | must hold | injected | survived | slowest recovery |", "|---|---|---|---|---|"]
    for path in sorted(REPORT_DIR.glob("*.json")):
        record = json.loads(path.read_text())
        recover = record["recover_max_s"]
        lines.append(
            f"| {record['key']}: {record['title']} ({record['mode']}) | {record['must_hold']} | {record['injected']} "
            f"| {record['survived']} | {'-' if recover is None else f'{recover:.1f} s'} |"
        )
    lines += ["", "## Figures", ""]
    lines += [f"- {figure.line().removeprefix('bench ')}" for figure in figures]
    missed = [figure for figure in figures if not figure.met]
    lines += ["", f"{len(figures) - len(missed)} of {len(figures)} figures met their goal."]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text("\n".join(lines) + "\n")
    return REPORT

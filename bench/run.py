"""Run every bench/bench_*.py and print one line per figure; exit 1 if a goal is missed."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report
from bench.common import setup_django


def main(selected: list[str]) -> int:
    setup_django()
    missed = 0
    figures = []
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        if selected and path.stem.removeprefix("bench_") not in selected:
            continue
        module = importlib.import_module(f"bench.{path.stem}")
        for figure in module.run():
            print(figure.line(), flush=True)
            figures.append(figure)
            missed += not figure.met
    print(f"reliability report: {report.write(figures)}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

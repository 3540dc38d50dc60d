"""The benchmark load generator's ceiling (issue 17): the most concurrent streams at which its own p99 timing
error stays under 1 ms, against tests/support/stamping_upstream.py; bench/loadgen_ceiling.py says how it is
measured (and runs one level or several from the command line, printing each level's row)."""

from __future__ import annotations

from bench.common import Figure
from bench.loadgen_ceiling import figures


def run() -> list[Figure]:
    return figures()

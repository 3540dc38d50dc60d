"""The benchmark load generator's ceiling: the most concurrent streams at which its own timing error stays under
1 ms at p99, against tests/support/stamping_upstream.py (a server with no model that stamps each chunk with its
send time, on a core of its own; the generator runs in this process on the other core).

The error of a token is its arrival stamp in the generator minus its send stamp in the server (one clock:
CLOCK_MONOTONIC), so it holds the loopback's delivery and everything the generator's event loop makes a token
wait. Each level is one closed-loop step of workers/jobs/loadgen.py: as many warm-up requests as streams (the
connections open), then two requests per stream measured; 40 tokens per request, one every 50 ms (500 streams:
10,000 tokens/s offered).

    python bench/loadgen_ceiling.py [100 250 500 750 1000]

`make bench` runs it as bench/bench_loadgen.py: one line, the ceiling and each level's p99 error in its detail.
"""

from __future__ import annotations

import io
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Figure
from tests.support.serve_process import free_port
from tests.support.stamping_upstream import StampingUpstream, timing_errors
from workers.jobs import loadgen
from workers.jobs.bench_figures import percentile
from workers.jobs.protocol import Events, StopRequest

LEVELS = (100, 250, 500, 1000)
TOKENS, DELAY = 40, 0.05
GOAL_MS, GOAL_STREAMS = 1.0, 500
MS = 1_000_000
# The server on the last core, the generator on the others (the default: a model server does not share the
# generator's cores; unpinned, the fake server's bursts stall the generator on a 2-core machine). 0 to leave both free.
PIN = os.environ.get("LOADGEN_CEILING_PIN", "1") == "1"


def measure(upstream: StampingUpstream, streams: int, work: Path) -> dict:
    """One step of `streams` callers; the timing error of its measured requests against the server's stamps."""
    raw_path = work / f"raw-{streams}.jsonl"
    spec = {
        "base_url": upstream.url,
        "dialect": "openai-chat",
        "model": "stamping",
        "workload": {"prompt_tokens": 32, "output_tokens": TOKENS},
        "steps": [{"concurrency": streams}],
        "warmup_requests": streams,
        "requests": 2 * streams,
        "request_timeout_s": 120,
        "raw_path": str(raw_path),
    }
    upstream.stamps(clear=True)
    out = io.StringIO()
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    loadgen.run(spec, Events(out), StopRequest())
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    step = json.loads(out.getvalue().splitlines()[-1])["steps"][0]
    records = [json.loads(line) for line in raw_path.read_text().splitlines()]
    stamps = upstream.stamps(clear=True)
    measured = [r for r in records if not r["warmup"]]
    errors = timing_errors(measured, stamps)
    # Where a request's time went: the server's own (arrival to last send) and the rest (the generator's turnaround,
    # the loopback), so a shortfall from the ideal tokens/s is put where it belongs.
    served = [(s["sent_ns"][-1] - s["received_ns"]) / MS for r in measured if (s := stamps.get(r["request_id"]))]
    lags = [abs(e) / MS for e in errors["lag"]]
    itls = [abs(e) / MS for e in errors["itl"]]
    return {
        "streams": streams,
        "tokens": len(lags),
        "failed": step["requests_failed"],
        "unmatched": len(errors["unmatched"]),  # failed, or chunks that do not pair one to one with the stamps
        "errors": step["errors"],
        "lag_ms_p50": round(percentile(lags, 50) or 0, 3),
        "lag_ms_p99": round(percentile(lags, 99) or 0, 3) if lags else None,
        "lag_ms_max": round(max(lags, default=0), 3),
        "itl_error_ms_p99": round(percentile(itls, 99) or 0, 3) if itls else None,
        "stamps": step["stamps"],
        # Not timing errors: how far behind its reads the generator was (a closed loop's next request waits that).
        "generator_lag_ms_p50": step["generator_lag_ms_p50"],
        "generator_lag_ms_p99": step["generator_lag_ms_p99"],
        # Tokens/s against what the callers would get from a server this fast with no generator in the way.
        "output_tokens_per_s": step["output_tokens_per_s"],
        "ideal_tokens_per_s": round(streams * TOKENS / (DELAY * TOKENS), 1),
        "server_ms_p50": round(percentile(served, 50) or 0, 1),
        "e2e_ms_p50": step["e2e_ms_p50"],
        "cpu_s_per_1000_tokens": round(cpu / max(len(records) * TOKENS, 1) * 1000, 4),
    }


def ceiling(levels: tuple[int, ...] = LEVELS, show: bool = True) -> tuple[int, list[dict]]:
    """The largest level, going up, whose every level so far kept the p99 error under GOAL_MS with no failure."""
    cpus = sorted(os.sched_getaffinity(0))
    rows, best = [], 0
    with tempfile.TemporaryDirectory() as scratch, StampingUpstream(free_port(), delay=DELAY, first_delay=DELAY) as up:
        if PIN and len(cpus) > 1:
            os.sched_setaffinity(up.process.pid, {cpus[-1]})
            os.sched_setaffinity(0, set(cpus[:-1]))
        for streams in levels:
            row = measure(up, streams, Path(scratch))
            rows.append(row)
            if show:
                print(json.dumps(row), flush=True)
            if row["failed"] or row["unmatched"] or row["lag_ms_p99"] is None or row["lag_ms_p99"] >= GOAL_MS:
                break
            best = streams
    return best, rows


def figures() -> list[Figure]:
    best, rows = ceiling(show=False)
    # The generator's own backlog beside each error: when it reads a token interval (50 ms) late, one read returns
    # several chunks and they share its kernel stamp, so a starved generator (a busy machine) shows as error.
    detail = "; ".join(
        f"{r['streams']}: p99 {r['lag_ms_p99']} ms, {r['failed']} failed, backlog p99 {r['generator_lag_ms_p99']} ms"
        for r in rows
    )
    if best == rows[-1]["streams"]:
        detail += f" (the highest level tried: the ceiling is {best} or more)"
    return [Figure("loadgen_ceiling_streams_p99_timing_error_under_1ms", best, "streams", ">=", GOAL_STREAMS, detail)]


if __name__ == "__main__":
    chosen = tuple(int(arg) for arg in sys.argv[1:]) or LEVELS
    best, _ = ceiling(chosen)
    print(f"ceiling: {best} concurrent streams with the generator's p99 timing error under {GOAL_MS:g} ms")

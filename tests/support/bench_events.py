"""A load generator's step events as workers/jobs/loadgen.py prints them, from hand-shaped streams run through
bench_figures (so every figure is the generator's own arithmetic), for tests of the benchmark pages."""

from __future__ import annotations

import io
import json

from workers.jobs.bench_figures import StreamRecord, step_figures
from workers.jobs.protocol import Events

MS = 1_000_000


def records(
    count: int, *, ttft_ms: int, gap_ms: int, failed: int = 0, error: str = "http_503", spread_ms: int = 0
) -> list:
    """`count` streams of 4 tokens (the first after ttft_ms, plus spread_ms for every fourth stream after the
    first four, then one every gap_ms), 10 ms apart, and `failed` requests refused with `error`."""
    made = []
    for i in range(count + failed):
        record = StreamRecord(index=i, start_ns=10 * i * MS, prompt_tokens=32)
        if i >= count:
            record.error, record.status, record.end_ns = error, int(error.split("_")[1]), (10 * i + 2) * MS
        else:
            first = ttft_ms + spread_ms * (i // 4)
            record.chunks = [((10 * i + first + gap_ms * k) * MS, 1) for k in range(4)]
            record.end_ns, record.status = (10 * i + first + 3 * gap_ms + 1) * MS, 200
        made.append(record)
    return made


def generator_lines(steps: list[dict]) -> list[str]:
    """One `metric` line per step: {"c": concurrency, "n": streams, "ttft": ms, "gap": ms, "failed": n,
    "error": "http_503", "spread": ms, "window_ms": 1000, "server": {server figures}}."""
    out = io.StringIO()
    events = Events(out)
    for index, step in enumerate(steps):
        streams = records(
            step["n"], ttft_ms=step["ttft"], gap_ms=step["gap"], failed=step.get("failed", 0),
            error=step.get("error", "http_503"), spread_ms=step.get("spread", 0),
        )  # fmt: skip
        figures = step_figures(streams, window_start_ns=0, window_end_ns=step.get("window_ms", 1000) * MS)
        events.metric(
            step=index, label=f"concurrency {step['c']}", concurrency=step["c"], **figures, **step.get("server", {})
        )
    return out.getvalue().splitlines()


def metric_events(steps: list[dict]) -> list[dict]:
    return [json.loads(line) for line in generator_lines(steps)]

"""The figures of one benchmark step, computed from the token arrival times of each stream. Pure: standard
library only, no clock and no I/O; workers/jobs/loadgen.py records the streams, this module judges them.

Definitions, chosen so that a figure here means what it means in the field's kept benchmarks (vLLM's
`benchmark_serving`, SGLang's `bench_serving`, guidellm):

- TTFT: arrival of the first chunk that carries at least one output token, minus the moment the request was
  sent. A chunk that carries no token (the role-only first chunk of an OpenAI chat stream, a usage-only chunk)
  is not a token and does not stop the clock.
- ITL (inter-token latency): a later chunk that carries k >= 1 tokens and arrived g after the previous
  token-carrying chunk gives k samples of g / k. With one token per chunk (TGI's streams always; vLLM's by
  default) that is vLLM's per-chunk ITL exactly. With chunks that carry several tokens it is SGLang's
  `adjust_itl` and the even spacing guidellm assumes (its ITL is (last - first) / (tokens - 1) per request), so
  the mean ITL equals TPOT. Counting k - 1 zero gaps plus one gap g was weighed and refused: the sum is the same
  but the median drops to 0 as soon as chunks carry two tokens, which is how peer consoles end up showing an
  ITL of 0. Tokens that come in the first chunk beyond the first have no gap and give no sample (as SGLang).
  The percentiles pool the samples of every stream (as vLLM), not per-stream means.
- E2E latency: end of the stream (its last byte, or the error) minus the moment the request was sent.
- Percentiles: linear interpolation between the closest ranks (numpy's default method, which vLLM uses).
  A figure with no sample is None (null in JSON), never 0.
- Throughput is measured over the step's window [window_start_ns, window_end_ns): output tokens/s counts the
  tokens of successful streams that arrived inside the window (a stream's server-reported token count, when it
  differs from the chunks counted, scales its chunks); total tokens/s adds the prompt tokens of the successful
  streams whose first token arrived inside the window; requests/s counts the successful streams that ended
  inside it. Warm-up traffic before the window and the drain after it are therefore not averaged in.
- Errors: a stream that failed (HTTP status, transport error, timeout, an error event, a stream cut short) is
  counted under its error type, beside the figures. Latencies and throughput are computed over successful
  streams only, and a step with any failed stream, warm-up included, is flagged `has_errors`.

The latency population is the step's measured streams: every stream not marked warm-up (the load generator marks
the streams it sends before the window opens).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


@dataclass
class StreamRecord:
    """One request of a step as the load generator saw it. Times are time.perf_counter_ns() of the generator's
    process; `chunks` holds only the chunks that carried tokens, as (arrival_ns, tokens) with tokens >= 1."""

    index: int
    start_ns: int
    request_id: str = ""
    warmup: bool = False
    scheduled_ns: int | None = None  # when an open-loop (Poisson) step meant to send it
    end_ns: int | None = None
    chunks: list[tuple[int, int]] = field(default_factory=list)
    prompt_tokens: int | None = None  # the server's count when it reports one, else the workload's
    output_tokens: int | None = None  # the server's count (usage, TGI details) when it reports one
    status: int | None = None  # HTTP status
    error: str | None = None  # error type; None: the stream succeeded
    error_message: str = ""
    server_timing: dict[str, str] = field(default_factory=dict)  # TGI's x-* timing headers, when sent

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def counted_tokens(self) -> int:
        return sum(tokens for _, tokens in self.chunks)

    @property
    def tokens(self) -> int:
        """Output tokens: the server's count when reported, else the chunks' tokens."""
        return self.output_tokens if self.output_tokens is not None else self.counted_tokens

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "request_id": self.request_id,
            "warmup": self.warmup,
            "scheduled_ns": self.scheduled_ns,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "chunks": [list(chunk) for chunk in self.chunks],
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "status": self.status,
            "error": self.error,
            "error_message": self.error_message,
            "server_timing": self.server_timing,
        }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ttft_ns(record: StreamRecord) -> int | None:
    return record.chunks[0][0] - record.start_ns if record.chunks else None


def itl_samples_ns(record: StreamRecord) -> list[float]:
    """Per-token gaps after the first token-carrying chunk: k samples of g / k for a chunk of k tokens."""
    samples: list[float] = []
    for (previous, _), (arrival, tokens) in zip(record.chunks, record.chunks[1:], strict=False):
        samples.extend([(arrival - previous) / tokens] * tokens)
    return samples


def tokens_in_window(record: StreamRecord, start_ns: int, end_ns: int) -> float:
    counted = record.counted_tokens
    if not counted:
        return 0.0
    inside = sum(tokens for arrival, tokens in record.chunks if start_ns <= arrival < end_ns)
    return inside * record.tokens / counted


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value / NS_PER_MS, 3)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def step_figures(records: Iterable[StreamRecord], *, window_start_ns: int, window_end_ns: int) -> dict[str, Any]:
    """The step's figures (see the module docstring): latencies in milliseconds, rates per second."""
    records = list(records)
    measured = [r for r in records if not r.warmup]
    ok = [r for r in measured if r.ok]
    failed = [r for r in records if not r.ok]
    errors = Counter(r.error for r in measured if not r.ok)
    measured_ids = {id(r) for r in measured}
    warmup_errors = Counter(r.error for r in failed if id(r) not in measured_ids)
    window_ns = max(window_end_ns - window_start_ns, 1)
    seconds = window_ns / NS_PER_S

    ttfts = [value for value in map(ttft_ns, ok) if value is not None]
    itls = [sample for record in ok for sample in itl_samples_ns(record)]
    e2es = [r.end_ns - r.start_ns for r in ok if r.end_ns is not None]
    successful = [r for r in records if r.ok]
    output_in_window = sum(tokens_in_window(r, window_start_ns, window_end_ns) for r in successful)
    prompt_in_window = sum(
        r.prompt_tokens or 0 for r in successful if r.chunks and window_start_ns <= r.chunks[0][0] < window_end_ns
    )
    ended_in_window = sum(1 for r in successful if r.end_ns is not None and window_start_ns <= r.end_ns < window_end_ns)
    chunks = sum(len(r.chunks) for r in ok)
    lags = [r.start_ns - r.scheduled_ns for r in measured if r.scheduled_ns is not None]
    mismatched = sum(1 for r in ok if r.output_tokens is not None and r.output_tokens != r.counted_tokens)

    return {
        "requests": len(measured),
        "requests_ok": len(ok),
        "requests_failed": len(measured) - len(ok),
        "errors": dict(sorted(errors.items())),
        "warmup_requests": len(records) - len(measured),
        "warmup_errors": dict(sorted(warmup_errors.items())),
        "has_errors": bool(failed),
        "window_s": round(seconds, 6),
        "ttft_ms_p50": _ms(percentile(ttfts, 50)),
        "ttft_ms_p90": _ms(percentile(ttfts, 90)),
        "ttft_ms_p99": _ms(percentile(ttfts, 99)),
        "ttft_ms_mean": _ms(_mean(ttfts)),
        "itl_ms_p50": _ms(percentile(itls, 50)),
        "itl_ms_p99": _ms(percentile(itls, 99)),
        "itl_ms_mean": _ms(_mean(itls)),
        "e2e_ms_p50": _ms(percentile(e2es, 50)),
        "e2e_ms_p99": _ms(percentile(e2es, 99)),
        "output_tokens_per_s": round(output_in_window / seconds, 3),
        "total_tokens_per_s": round((output_in_window + prompt_in_window) / seconds, 3),
        "requests_per_s": round(ended_in_window / seconds, 4),
        "prompt_tokens_mean": _mean([r.prompt_tokens for r in ok if r.prompt_tokens is not None]),
        "output_tokens_mean": _mean([r.tokens for r in ok]),
        "tokens_per_chunk_mean": round(sum(r.counted_tokens for r in ok) / chunks, 4) if chunks else None,
        "token_count_mismatches": mismatched,
        "schedule_lag_ms_p99": _ms(percentile(lags, 99)),
    }

"""The benchmark's figures from token arrival times (workers/jobs/bench_figures.py), against cases computed by
hand: percentiles, TTFT, ITL with one and several tokens per chunk, the measurement window, and failed streams
flagged and kept out of the latencies."""

from __future__ import annotations

import pytest

from workers.jobs.bench_figures import StreamRecord, itl_samples_ns, percentile, step_figures

MS = 1_000_000
S = 1_000_000_000


def stream(index: int, start_ms: float, arrivals_ms: list[float], end_ms: float, **fields) -> StreamRecord:
    """A record with chunks of one token at the given times (a (time, tokens) pair for more tokens)."""
    chunks = []
    for arrival in arrivals_ms:
        at, tokens = arrival if isinstance(arrival, tuple) else (arrival, 1)
        chunks.append((round(at * MS), tokens))
    return StreamRecord(index=index, start_ns=round(start_ms * MS), end_ns=round(end_ms * MS), chunks=chunks, **fields)


def test_percentiles_interpolate_between_ranks_as_numpy_and_vllm_do():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile(values, 0) == 1.0 and percentile(values, 100) == 4.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_ttft_itl_and_e2e_of_one_token_chunks():
    record = stream(0, 0, [100, 110, 130, 160], 170)
    figures = step_figures([record], window_start_ns=0, window_end_ns=200 * MS)
    assert figures["ttft_ms_p50"] == 100.0
    # gaps 10, 20, 30 ms
    assert figures["itl_ms_p50"] == 20.0
    assert figures["itl_ms_p99"] == pytest.approx(29.8)
    assert figures["itl_ms_mean"] == 20.0
    assert figures["e2e_ms_p50"] == 170.0
    assert figures["has_errors"] is False and figures["errors"] == {}
    assert figures["tokens_per_chunk_mean"] == 1.0


def test_a_chunk_of_several_tokens_spreads_its_gap_over_its_tokens():
    # 6 tokens: one at 100 ms, one at 120 ms, then four together at 160 ms.
    record = stream(0, 0, [100, 120, (160, 4)], 165)
    assert [round(gap / MS, 6) for gap in itl_samples_ns(record)] == [20, 10, 10, 10, 10]
    figures = step_figures([record], window_start_ns=0, window_end_ns=S)
    # The mean ITL is TPOT: (160 - 100) / (6 - 1); the median is a real gap, not the 0 that "k - 1 zero gaps" gives.
    assert figures["itl_ms_mean"] == pytest.approx(12.0)
    assert figures["itl_ms_p50"] == 10.0
    assert figures["tokens_per_chunk_mean"] == 2.0


def test_tokens_that_arrive_with_the_first_give_no_gap():
    record = stream(0, 0, [(100, 3), 130], 140)
    assert itl_samples_ns(record) == [30 * MS]
    figures = step_figures([record], window_start_ns=0, window_end_ns=S)
    assert figures["ttft_ms_p50"] == 100.0 and figures["output_tokens_mean"] == 4


def test_failed_streams_are_counted_beside_the_figures_never_averaged_in():
    records = [
        stream(0, 0, [50, 60], 70, warmup=True, error="http_503", status=503),  # warm-up, failed
        stream(1, 100, [150, 160], 170),
        stream(2, 100, [200, 210], 220),
        stream(3, 110, [], 9_000, error="timeout"),  # would be the worst latency by far
        stream(4, 120, [5_000], 5_100, error="incomplete"),
        stream(5, 130, [], 131, error="http_503", status=503),
    ]
    figures = step_figures(records, window_start_ns=100 * MS, window_end_ns=300 * MS)
    assert figures["has_errors"] is True
    assert figures["requests"] == 5 and figures["requests_ok"] == 2 and figures["requests_failed"] == 3
    assert figures["errors"] == {"http_503": 1, "incomplete": 1, "timeout": 1}
    assert figures["warmup_requests"] == 1 and figures["warmup_errors"] == {"http_503": 1}
    # Latencies are the two successful streams only: TTFT 50 and 100 ms, E2E 70 and 120 ms.
    assert figures["ttft_ms_p50"] == 75.0 and figures["ttft_ms_p99"] == pytest.approx(99.5)
    assert figures["e2e_ms_p99"] == pytest.approx(119.5)
    # Throughput counts the tokens of successful streams only: 4 tokens in 0.2 s.
    assert figures["output_tokens_per_s"] == pytest.approx(20.0)


def test_a_warm_up_error_alone_still_flags_the_step():
    records = [stream(0, 0, [], 5, warmup=True, error="connection"), stream(1, 10, [20], 30)]
    figures = step_figures(records, window_start_ns=10 * MS, window_end_ns=40 * MS)
    assert figures["has_errors"] is True and figures["errors"] == {} and figures["requests_failed"] == 0


def test_a_step_with_no_successful_stream_has_no_latency_figures_rather_than_zeros():
    records = [stream(0, 0, [], 10, error="http_500"), stream(1, 0, [], 10, error="http_500")]
    figures = step_figures(records, window_start_ns=0, window_end_ns=S)
    for name in ("ttft_ms_p50", "ttft_ms_p99", "itl_ms_p50", "itl_ms_p99", "e2e_ms_p50", "e2e_ms_p99"):
        assert figures[name] is None, name
    assert figures["output_tokens_per_s"] == 0 and figures["errors"] == {"http_500": 2}


def test_throughput_counts_what_arrived_inside_the_window():
    # Window 1.0 s .. 2.0 s. A warm-up stream's tokens inside the window count (the server did that work then);
    # tokens before or after the window do not; a stream whose first token came inside adds its prompt tokens.
    records = [
        stream(0, 0, [500, 900, 1_100, 1_200], 1_250, warmup=True, prompt_tokens=100),
        stream(1, 1_000, [1_300, 1_400, 1_900, 2_100], 2_150, prompt_tokens=10),
        stream(2, 1_500, [1_600, 1_700], 1_800, prompt_tokens=20),
    ]
    figures = step_figures(records, window_start_ns=1 * S, window_end_ns=2 * S)
    assert figures["output_tokens_per_s"] == pytest.approx(2 + 3 + 2)
    assert figures["total_tokens_per_s"] == pytest.approx(7 + 10 + 20)
    assert figures["requests_per_s"] == pytest.approx(2)  # streams 0 and 2 ended inside; 1 ended after
    assert figures["requests"] == 2 and figures["window_s"] == 1.0


def test_a_server_token_count_scales_the_chunks_it_differs_from():
    # The server says 8 tokens came in 4 chunks counted as one each (coalesced chunks without per-chunk usage).
    record = stream(0, 0, [100, 200, 300, 400], 450, output_tokens=8)
    figures = step_figures([record], window_start_ns=0, window_end_ns=250 * MS)
    assert figures["output_tokens_per_s"] == pytest.approx(4 / 0.25)  # two chunks of the four, half the 8 tokens
    assert figures["token_count_mismatches"] == 1 and figures["output_tokens_mean"] == 8


def test_open_loop_schedule_lag_is_reported():
    records = [stream(i, 100 + i * 10 + lag, [200 + i * 10], 210 + i * 10) for i, lag in enumerate([0, 0.5, 2])]
    for record, scheduled in zip(records, (100, 110, 120), strict=True):
        record.scheduled_ns = scheduled * MS
    figures = step_figures(records, window_start_ns=0, window_end_ns=S)
    assert figures["schedule_lag_ms_p99"] == pytest.approx(1.97)
    closed = step_figures([stream(0, 0, [10], 20)], window_start_ns=0, window_end_ns=S)
    assert closed["schedule_lag_ms_p99"] is None

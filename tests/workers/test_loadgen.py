"""The benchmark's load generator (python -m workers.jobs.loadgen) as a real subprocess against a fake model
server that stamps every chunk with its send time (tests/support/stamping_upstream.py): its TTFT and ITL per
request agree with the stamped times in all three dialects, coalesced chunks and failed streams are counted as
bench_figures says, Poisson arrivals keep their rate, bad specs and SIGTERM follow the job-program contract."""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.job_program import JobRun
from tests.support.serve_process import ROOT, free_port
from tests.support.stamping_upstream import StampingUpstream, self_signed_certificate, timing_errors
from workers.jobs.bench_figures import percentile
from workers.jobs.loadgen_http import Pool
from workers.jobs.loadgen_workload import LengthDistribution, PromptBuilder, load_tokenizer, poisson_offsets_ns
from workers.jobs.protocol import EXIT_BAD_INPUT, EXIT_OK, EXIT_STOPPED, parse_event

MS = 1_000_000
TOKENIZER = ROOT / "tests/fixtures/tokenizer/tokenizer.json"


def run_loadgen(spec: dict, work: Path, *, on_event=None, timeout: float = 60) -> JobRun:
    """The program under the contract, with the control plane's python (it needs aiohttp, not torch)."""
    work.mkdir(parents=True, exist_ok=True)
    spec_file = work / "loadgen-spec.json"
    spec_file.write_text(json.dumps(spec))
    process = subprocess.Popen(
        [sys.executable, "-m", "workers.jobs.loadgen", "--spec", str(spec_file)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    watchdog = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
    watchdog.start()
    run = JobRun(code=-1)
    try:
        for line in process.stdout:
            event = parse_event(line)
            assert event is not None, f"not an event on stdout: {line!r}"
            run.events.append(event)
            if on_event:
                on_event(event, process)
        run.code = process.wait(timeout)
        run.stderr = process.stderr.read()
    finally:
        watchdog.cancel()
    return run


def spec_for(upstream: StampingUpstream | str, tmp_path: Path, **overrides) -> dict:
    spec = {
        "base_url": upstream if isinstance(upstream, str) else upstream.url,
        "api_key": "test-key",
        "dialect": "openai-chat",
        "model": "stamping",
        "workload": {"prompt_tokens": 64, "output_tokens": 30},
        "steps": [{"concurrency": 16}],
        "warmup_requests": 16,
        "requests": 48,
        "seed": 7,
        "raw_path": str(tmp_path / "raw.jsonl"),
    }
    return {**spec, **overrides}


def raw_records(spec: dict) -> list[dict]:
    return [json.loads(line) for line in Path(spec["raw_path"]).read_text().splitlines()]


@pytest.fixture(scope="module")
def upstream():
    # 30 ms to the first token, then one token every 10 ms.
    with StampingUpstream(free_port(), delay=0.01, first_delay=0.03) as server:
        yield server


@pytest.mark.parametrize("dialect", ["openai-chat", "openai-completion", "tgi-generate-stream"])
def test_ttft_and_itl_of_each_request_match_the_servers_stamps(upstream, tmp_path, dialect):
    upstream.stamps(clear=True)
    spec = spec_for(upstream, tmp_path, dialect=dialect)
    run = run_loadgen(spec, tmp_path)
    assert run.code == EXIT_OK, run.stderr[-2000:]
    figures = run.one("metric")
    assert figures["has_errors"] is False and figures["requests_ok"] == 48, figures
    records = raw_records(spec)
    stamps = upstream.stamps()
    errors = timing_errors(records, stamps)
    assert errors["unmatched"] == [] and len(errors["ttft"]) == 64
    ttft_error_p99 = percentile([abs(e) for e in errors["ttft"]], 99) / MS
    itl_error_p99 = percentile([abs(e) for e in errors["itl"]], 99) / MS
    assert ttft_error_p99 <= 5, f"TTFT differs from the stamped one by {ttft_error_p99:.3f} ms at p99"
    assert itl_error_p99 <= 2, f"ITL differs from the stamped gap by {itl_error_p99:.3f} ms at p99"
    # The step's figures are those of the stamped times (measured requests only, warm-up left out).
    measured = [(r, stamps[r["request_id"]]["sent_ns"]) for r in records if not r["warmup"]]
    stamped_ttft = [(sent[0] - r["start_ns"]) / MS for r, sent in measured]
    stamped_itl = [(b - a) / MS for _, sent in measured for a, b in itertools.pairwise(sent)]
    stamped_last = [(sent[-1] - r["start_ns"]) / MS for r, sent in measured]
    assert figures["ttft_ms_p50"] == pytest.approx(percentile(stamped_ttft, 50), abs=1)
    assert figures["ttft_ms_p90"] == pytest.approx(percentile(stamped_ttft, 90), abs=2)
    assert figures["itl_ms_p50"] == pytest.approx(percentile(stamped_itl, 50), abs=0.5)
    assert figures["e2e_ms_p50"] == pytest.approx(percentile(stamped_last, 50), abs=2)
    # The server sends the first token after 30 ms: a chat stream's role-only first chunk, sent at once, is no token.
    assert figures["ttft_ms_p50"] >= 30
    assert figures["output_tokens_mean"] == 30 and figures["tokens_per_chunk_mean"] == 1


def test_an_event_split_over_two_reads_is_stamped_when_it_is_complete(tmp_path):
    # Each event's first half goes out 5 ms before the rest (the stamp is the rest's send time).
    with StampingUpstream(free_port(), delay=0.01, first_delay=0.02, split=0.005) as server:
        spec = spec_for(server, tmp_path, steps=[{"concurrency": 4}], warmup_requests=0, requests=8)
        spec["workload"] = {"prompt_tokens": 16, "output_tokens": 10}
        assert run_loadgen(spec, tmp_path).one("metric")["requests_ok"] == 8
        errors = timing_errors(raw_records(spec), server.stamps())
    assert errors["unmatched"] == []
    assert max(abs(e) for e in errors["ttft"] + errors["itl"]) / MS < 2.5  # not the 5 ms of the first half


def test_chunks_of_several_tokens_are_counted_by_the_servers_usage(tmp_path):
    with StampingUpstream(free_port(), delay=0.015, first_delay=0.02, chunk_tokens=3) as server:
        common = {"workload": {"prompt_tokens": 16, "output_tokens": 12}, "steps": [{"concurrency": 4}]}
        continuous = spec_for(server, tmp_path / "a", dialect="openai-completion", **common)
        continuous["sampling"] = {"continuous_usage": True}
        counted = run_loadgen(continuous, tmp_path / "a").one("metric")
        plain = run_loadgen(spec_for(server, tmp_path / "b", **common), tmp_path / "b").one("metric")
    # With a count in every chunk: 4 chunks of 3 tokens, each gap of 15 ms spread over its 3 tokens.
    assert counted["tokens_per_chunk_mean"] == 3 and counted["token_count_mismatches"] == 0
    assert 4.5 <= counted["itl_ms_p50"] <= 6
    # Without: each chunk counts as one token, and the final usage (12) is the stream's output, flagged.
    assert plain["tokens_per_chunk_mean"] == 1 and plain["token_count_mismatches"] == plain["requests_ok"]
    assert plain["output_tokens_mean"] == 12 and counted["output_tokens_mean"] == 12


def test_failed_streams_are_counted_by_type_and_flag_the_step(tmp_path):
    # Calls 4, 8, 12, 16, 20 are refused (503); streams 5, 10, 15 are cut in the middle.
    with StampingUpstream(free_port(), delay=0.005, first_delay=0.01, fail_every=4, cut_every=5) as server:
        spec = spec_for(server, tmp_path, steps=[{"concurrency": 4}], warmup_requests=0, requests=20)
        spec["workload"] = {"prompt_tokens": 16, "output_tokens": 10}
        run = run_loadgen(spec, tmp_path)
    assert run.code == EXIT_OK
    figures = run.one("metric")
    assert figures["has_errors"] is True
    assert figures["errors"] == {"http_503": 5, "incomplete": 3}
    assert figures["requests_ok"] == 12 and figures["requests_failed"] == 8
    # The latencies are the successful streams': whole answers of 10 tokens, none of the short failures.
    assert figures["e2e_ms_p50"] >= 10 + 9 * 5
    failed = [r for r in raw_records(spec) if r["error"]]
    assert {r["status"] for r in failed if r["error"] == "http_503"} == {503}
    assert all("overloaded" in r["error_message"] for r in failed if r["error"] == "http_503")


def test_connections_are_kept_between_the_requests_of_a_caller(upstream, tmp_path):
    upstream.stamps(clear=True)
    spec = spec_for(upstream, tmp_path, steps=[{"concurrency": 8}], warmup_requests=0, requests=40)
    spec["workload"] = {"prompt_tokens": 16, "output_tokens": 4}
    assert run_loadgen(spec, tmp_path).one("metric")["requests_ok"] == 40
    ports = {stamp["peer_port"] for stamp in upstream.stamps().values()}
    assert len(ports) == 8  # one connection per caller, not one per request (no connection setup in TTFT)


def test_connections_the_server_closed_while_idle_are_not_used_again(tmp_path):
    # The server drops a connection idle for 0.1 s; Poisson gaps at 5 requests/s are often longer.
    with StampingUpstream(free_port(), delay=0.005, first_delay=0.01, keepalive=0.1) as server:
        spec = spec_for(server, tmp_path, steps=[{"rate": 5}], warmup_requests=0, requests=8)
        spec["workload"] = {"prompt_tokens": 16, "output_tokens": 4}
        figures = run_loadgen(spec, tmp_path).one("metric")
        ports = {stamp["peer_port"] for stamp in server.stamps().values()}
    assert figures["has_errors"] is False and figures["requests_ok"] == 8
    assert len(ports) > 1  # new connections were opened after the server closed idle ones


def test_https_streams_are_timed_alike_and_the_certificate_is_checked(tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    with StampingUpstream(free_port(), delay=0.01, first_delay=0.03, tls_cert=cert, tls_key=key) as server:
        spec = spec_for(server, tmp_path / "trusted", steps=[{"concurrency": 8}], warmup_requests=8, requests=16)
        spec["tls_verify"] = False  # the gateway's certificate may be a private CA's: the operator's choice
        figures = run_loadgen(spec, tmp_path / "trusted").one("metric")
        errors = timing_errors(raw_records(spec), server.stamps())
        checked = spec_for(server, tmp_path / "checked", warmup_requests=0, requests=2)
        refused = run_loadgen(checked, tmp_path / "checked").one("metric")
    assert figures["has_errors"] is False and figures["stamps"] == "kernel"
    assert errors["unmatched"] == [] and len(errors["itl"]) == 24 * 29
    assert percentile([abs(e) for e in errors["ttft"]], 99) / MS <= 5
    assert percentile([abs(e) for e in errors["itl"]], 99) / MS <= 2
    # Verified by default: a certificate no authority signed is a connection error, counted as such.
    assert refused["requests_ok"] == 0 and set(refused["errors"]) == {"connection"}
    assert refused["has_errors"] is True


def test_refused_unanswered_and_unauthorized_requests_get_their_error_types(tmp_path):
    nothing = f"http://127.0.0.1:{free_port()}"
    common = {"steps": [{"concurrency": 2}], "warmup_requests": 0, "requests": 4}
    closed = run_loadgen(
        {**spec_for(StampingUpstream(0), tmp_path / "a", **common), "base_url": nothing}, tmp_path / "a"
    )
    with StampingUpstream(free_port(), delay=0.01, first_delay=3, api_key="right") as server:
        slow = spec_for(server, tmp_path / "b", api_key="right", request_timeout_s=1, **common)
        wrong = spec_for(server, tmp_path / "c", api_key="wrong", **common)
        timed_out, unauthorized = run_loadgen(slow, tmp_path / "b"), run_loadgen(wrong, tmp_path / "c")
    assert closed.one("metric")["errors"] == {"connection": 4}
    assert timed_out.one("metric")["errors"] == {"timeout": 4}
    assert unauthorized.one("metric")["errors"] == {"http_401": 4}
    for run in (closed, timed_out, unauthorized):
        assert run.code == EXIT_OK and run.one("metric")["has_errors"] is True
        assert run.one("metric")["ttft_ms_p50"] is None


def test_poisson_arrivals_have_the_rate_and_spread_of_a_poisson_process():
    arrivals = poisson_offsets_ns(40, random.Random("any seed"))
    times = [next(arrivals) for _ in range(20_000)]
    gaps = [b - a for a, b in itertools.pairwise([0, *times])]
    assert 1e9 / statistics.mean(gaps) == pytest.approx(40, rel=0.03)
    assert statistics.stdev(gaps) / statistics.mean(gaps) == pytest.approx(1, abs=0.03)  # exponential gaps


def test_an_open_loop_step_sends_on_its_poisson_schedule(upstream, tmp_path):
    spec = spec_for(upstream, tmp_path, steps=[{"rate": 50}], warmup_requests=0, requests=150)
    spec["workload"] = {"prompt_tokens": 16, "output_tokens": 3}
    run = run_loadgen(spec, tmp_path)
    assert run.code == EXIT_OK
    figures = run.one("metric")
    assert figures["rate"] == 50 and figures["requests_ok"] == 150
    records = raw_records(spec)
    scheduled = sorted(r["scheduled_ns"] for r in records)
    started = sorted(r["start_ns"] for r in records)
    # The seed's schedule (the same on every run), kept by the generator: each request went out on time, so
    # the rate actually sent is the scheduled one, whatever the streams in flight.
    assert figures["schedule_lag_ms_p99"] < 5
    scheduled_rate = (len(scheduled) - 1) / (scheduled[-1] - scheduled[0])
    sent_rate = (len(started) - 1) / (started[-1] - started[0])
    assert sent_rate == pytest.approx(scheduled_rate, rel=0.02)
    assert scheduled_rate * 1e9 == pytest.approx(50, rel=0.25)  # 150 exponential gaps: within 3 sigma of 50/s


def test_sigterm_stops_between_requests_after_the_finished_steps_were_reported(upstream, tmp_path):
    spec = spec_for(upstream, tmp_path, warmup_requests=0, requests=None)
    spec["steps"] = [{"concurrency": 2, "duration_s": 0.5}, {"concurrency": 2, "duration_s": 30}]

    def on_event(event, process):
        if event["type"] == "progress" and event["step"] == 1:
            process.send_signal(signal.SIGTERM)

    run = run_loadgen(spec, tmp_path, on_event=on_event, timeout=20)
    assert run.code == EXIT_STOPPED
    assert [event["step"] for event in run.of("metric")] == [0]
    assert run.of("result") == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dialect": "grpc"}, "dialect"),
        ({"steps": [{"concurrency": 4, "rate": 2}]}, "steps[0]"),
        ({"steps": [{"concurrency": 0}]}, "steps[0].concurrency"),
        ({"requests": None}, "duration_s"),
        (
            {"workload": {"prompt_tokens": {"percentiles": {"p50": 10}}, "output_tokens": 8}},
            "workload.prompt_tokens.percentiles",
        ),
        ({"sampling": {"top_p": 2}}, "sampling.top_p"),
        ({"steps": [{"concurrency": 1}], "workers": 3}, "workers"),
        ({"api_key": "key\r\nX-Other: header"}, "api_key"),
        ({"api_key_file": "/nonexistent/key"}, "api_key_file"),
    ],
)
def test_a_wrong_spec_is_refused_before_any_request(upstream, tmp_path, change, field):
    upstream.stamps(clear=True)
    run = run_loadgen({**spec_for(upstream, tmp_path), **change}, tmp_path)
    assert run.code == EXIT_BAD_INPUT
    assert run.one("error")["field"] == field
    assert upstream.stamps() == {}


def test_requests_go_to_the_path_under_the_base_url_with_its_host():
    pool = Pool("https://gateway.example:8443/llm/7/", tls_verify=True)
    request = pool._request_bytes("/generate_stream", {"Authorization": "Bearer k"}, b'{"inputs": "x"}')
    head, body = request.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /llm/7/generate_stream HTTP/1.1"
    assert {"Host: gateway.example:8443", "Authorization: Bearer k", "Content-Length: 15"} <= set(lines)
    assert body == b'{"inputs": "x"}' and pool.tls and pool.port == 8443


def test_prompts_are_built_to_the_exact_token_length_with_a_tokenizer():
    tokenizer = load_tokenizer(str(TOKENIZER))
    builder = PromptBuilder(longest=2048, seed=3, tokenizer=tokenizer)
    rng = random.Random(0)
    prompts = set()
    for length in (1, 7, 128, 2048):
        for _ in range(8):
            text, counted = builder.build(length, rng)
            assert counted == length
            assert len(tokenizer.encode(text, add_special_tokens=False).ids) == length
            if length >= 128:
                prompts.add(text[:40])
    assert len(prompts) == 16  # no two prompts start alike: a prefix cache cannot answer them


def test_length_distributions_draw_within_their_shape():
    rng = random.Random(1)
    spread = LengthDistribution.parse({"percentiles": {"min": 10, "p50": 100, "p90": 200, "max": 1000}}, "f")
    draws = sorted(spread.draw(rng) for _ in range(20_000))
    assert draws[0] >= 10 and draws[-1] <= 1000
    # The percentiles given are the draws' percentiles.
    assert sum(d <= 100 for d in draws) / len(draws) == pytest.approx(0.5, abs=0.015)
    assert sum(d <= 200 for d in draws) / len(draws) == pytest.approx(0.9, abs=0.01)
    # dataset_stats' token_lengths, as it is: bins[i] <= L < bins[i + 1], drawn by count.
    stats = {"min": 3, "max": 30, "p50": 12, "bins": [0, 10, 20, 31], "counts": [1, 2, 1]}
    histogram = LengthDistribution.parse(stats, "f")
    draws = [histogram.draw(rng) for _ in range(20_000)]
    assert min(draws) >= 1 and max(draws) <= 30
    assert sum(10 <= d < 20 for d in draws) / len(draws) == pytest.approx(0.5, abs=0.02)

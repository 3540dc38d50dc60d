"""The benchmark's server figures (workers/jobs/loadgen_metrics.py): the load generator samples each server's own
/metrics during a step. Against real serve.py and vllm_serve.py processes on the tiny model a sweep of 1 and 4
callers gets the queue and batch figures (the batch grows with the callers) and a per-token time that agrees with
the client's ITL; an unreachable /metrics leaves the figures empty and says why, the steps still succeed; both
dialects' expositions (tests/fixtures/server-metrics, see SOURCE.md) read as the servers mean them."""

from __future__ import annotations

import http.server
import re
import threading
from pathlib import Path

import pytest

from tests.conftest import need
from tests.support.serve_process import ROOT, ServeProcess, free_port, make_model, ml_python
from tests.support.stamping_upstream import StampingUpstream
from tests.support.vllm_process import VllmProcess
from tests.workers.test_loadgen import run_loadgen
from workers.jobs.loadgen_metrics import (
    TIMING_TOLERANCE_REL,
    ServerMetrics,
    parse_exposition,
    reading_of,
    timing_check,
)
from workers.jobs.loadgen_spec import parse_spec
from workers.jobs.protocol import EXIT_OK, BadInput

FIXTURES = ROOT / "tests/fixtures/server-metrics"
SERVER_FIGURES = ("queue_size", "batch_size", "batch_tokens", "queue_size_max", "batch_size_max", "server_itl_ms_mean")


def text(name: str) -> str:
    return (FIXTURES / name).read_text()


def plain_value(exposition: str, line_start: str) -> float:
    """A value read with nothing but string matching: the independent reading the parser is checked against."""
    values = [float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines() if line.startswith(line_start)]
    assert values, line_start
    return sum(values)


# -- the two dialects ------------------------------------------------------------------------------------------
def test_tgi_exposition_reads_as_the_routers_gauges_and_histograms():
    exposition = text("tgi-3-after.prom")
    reading = reading_of(parse_exposition(exposition))
    assert reading.dialect == "tgi"
    assert reading.gauges == {"queue": 3, "batch": 8, "batch_tokens": 5120, "kv": None}  # TGI reports no KV fill
    # Prefill is the prefill batches' histogram only, not the decode one beside it under the same name.
    assert reading.histograms["prefill"] == (
        pytest.approx(plain_value(exposition, 'tgi_batch_inference_duration_sum{method="prefill"}')),
        plain_value(exposition, 'tgi_batch_inference_duration_count{method="prefill"}'),
    )
    assert (
        reading.histograms["itl"][1] == 184 == plain_value(exposition, "tgi_request_mean_time_per_token_duration_count")
    )
    assert reading.histograms["queue"][1] == 184


def test_vllm_exposition_sums_the_engines_and_takes_the_fullest_kv_cache():
    exposition = text("vllm-0.10-dp2-after.prom")
    reading = reading_of(parse_exposition(exposition))
    assert reading.dialect == "vllm"
    # Two engines (data parallel): the queue and the batch are the server's, the sum; the KV fill is a share.
    assert reading.gauges == {"queue": 10 + 11, "batch": 24 + 26, "kv": 0.52}
    # Before vllm:inter_token_latency_seconds was named so, the per-token histogram was time_per_output_token.
    assert reading.histograms["itl"] == (
        pytest.approx(plain_value(exposition, "vllm:time_per_output_token_seconds_sum")),
        plain_value(exposition, "vllm:time_per_output_token_seconds_count"),
    )
    assert reading.histograms["prefill"][1] == 80 + 83


def test_the_parser_reads_escaped_labels_timestamps_and_skips_what_it_cannot_read():
    series = parse_exposition(
        '# HELP x a "quoted" help\n'
        'vllm:num_requests_waiting{model_name="a\\"b,c}",engine="0"} 4 1700000000000\n'
        'vllm:num_requests_waiting{engine="1"} NaN\n'
        "garbage line without value\n"
        "tgi_queue_size 2e1\n",
        names=None,
    )
    assert series["vllm:num_requests_waiting"][0] == ({"model_name": 'a"b,c}', "engine": "0"}, 4.0)
    assert series["tgi_queue_size"] == [({}, 20.0)]
    assert "garbage" not in series
    assert reading_of(series).gauges["queue"] == 4.0  # NaN is no reading
    assert reading_of(parse_exposition("python_info 1\nprocess_open_fds 4\n")) is None


class Exposition:
    """A real HTTP server whose /metrics answers `body` (which the test changes between reads)."""

    def __init__(self, body: str) -> None:
        self.body = body
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                payload = owner.body.encode()
                self.send_response(200 if self.path == "/metrics" else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def delta_mean_ms(before: str, after: str, name: str, servers: int = 1) -> float:
    total = plain_value(after, f"{name}_sum") - plain_value(before, f"{name}_sum")
    count = plain_value(after, f"{name}_count") - plain_value(before, f"{name}_count")
    return total * servers / (count * servers) * 1000


@pytest.mark.parametrize(
    ("dialect", "itl_name", "queue_name", "prefill_name"),
    [
        ("tgi-3", "tgi_request_mean_time_per_token_duration", "tgi_request_queue_duration",
         'tgi_batch_inference_duration{method="prefill"}'),
        ("vllm-0.10-dp2", "vllm:time_per_output_token_seconds", "vllm:request_queue_time_seconds",
         "vllm:request_prefill_time_seconds"),
    ],
)  # fmt: skip
def test_a_steps_server_times_are_its_histogram_differences_over_all_replicas(
    dialect, itl_name, queue_name, prefill_name
):
    before, after = text(f"{dialect}-before.prom"), text(f"{dialect}-after.prom")
    servers = [Exposition(before), Exposition(before)]  # a deployment with two replicas
    try:
        sampler = ServerMetrics([s.url for s in servers], period_s=3600).start()
        for server in servers:
            server.body = after
        sampler.stop()
        figures = sampler.figures()
    finally:
        for server in servers:
            server.close()
    prefill_sum = prefill_name.replace("{", "_sum{") if "{" in prefill_name else f"{prefill_name}_sum"
    prefill_count = prefill_sum.replace("_sum", "_count")
    expected_prefill = (plain_value(after, prefill_sum) - plain_value(before, prefill_sum)) / (
        plain_value(after, prefill_count) - plain_value(before, prefill_count)
    )
    assert figures["server_itl_ms_mean"] == pytest.approx(delta_mean_ms(before, after, itl_name), abs=1e-3)
    assert figures["server_queue_ms_mean"] == pytest.approx(delta_mean_ms(before, after, queue_name), abs=1e-3)
    assert figures["server_prefill_ms_mean"] == pytest.approx(expected_prefill * 1000, abs=1e-3)
    # The gauges of a sample are the deployment's: both replicas' queues and batches added up.
    one = reading_of(parse_exposition(after)).gauges
    assert figures["queue_size_max"] == 2 * one["queue"] and figures["batch_size_max"] == 2 * one["batch"]
    assert figures["kv_cache_usage_max"] == one["kv"]
    assert "server_metrics_error" not in figures


def test_vllm_batch_tokens_are_its_tokens_per_engine_step_between_two_samples():
    before, after = text("vllm-0.10-dp2-before.prom"), text("vllm-0.10-dp2-after.prom")
    server = Exposition(before)
    try:
        sampler = ServerMetrics([server.url], period_s=3600).start()
        server.body = after
        sampler.stop()
    finally:
        server.close()
    tokens = plain_value(after, "vllm:iteration_tokens_total_sum") - plain_value(
        before, "vllm:iteration_tokens_total_sum"
    )
    steps = plain_value(after, "vllm:iteration_tokens_total_count") - plain_value(
        before, "vllm:iteration_tokens_total_count"
    )
    assert sampler.figures()["batch_tokens"] == pytest.approx(tokens / steps, abs=1e-3)


def test_the_timing_check_flags_only_a_disagreement_beyond_its_tolerance():
    assert timing_check(None, 10.0) is None and timing_check(10.0, None) is None
    close = timing_check(11.5, 10.0)
    assert close["itl_ratio"] == 1.15 and close["timing_disagrees"] is False
    assert timing_check(10.0 * (1 + TIMING_TOLERANCE_REL) + 0.1, 10.0)["timing_disagrees"] is True
    assert timing_check(5.0, 10.0)["timing_disagrees"] is True  # the client measuring half: wrong somewhere
    assert timing_check(2.9, 1.0)["timing_disagrees"] is False  # 2 ms absolute floor for very fast servers


def test_the_spec_takes_metrics_urls_and_refuses_what_is_not_one():
    base = {"base_url": "http://x", "dialect": "tgi-generate-stream", "workload": {"prompt_tokens": 4,
            "output_tokens": 4}, "steps": [{"concurrency": 1}], "requests": 1}  # fmt: skip
    assert parse_spec(base).metrics_urls == ()
    assert parse_spec({**base, "metrics_urls": ["http://10.0.0.5:80/metrics"]}).metrics_urls == (
        "http://10.0.0.5:80/metrics",
    )
    for bad in ("http://x/metrics", ["ftp://x/metrics"], ["http://x:99999/metrics"], ["http://x/ a"], [3]):
        with pytest.raises(BadInput) as error:
            parse_spec({**base, "metrics_urls": bad})
        assert error.value.field == "metrics_urls"
    scraped = {**base, "metrics_urls": ["http://10.0.0.5:80/metrics"]}
    assert parse_spec({**scraped, "kv_budgets": {"http://10.0.0.5:80/metrics": 4096}}).kv_budgets == {
        "http://10.0.0.5:80/metrics": 4096
    }
    for bad in ({"http://other/metrics": 4096}, {"http://10.0.0.5:80/metrics": 0}, {"http://10.0.0.5:80/metrics": True},
                [4096]):  # fmt: skip
        with pytest.raises(BadInput) as error:
            parse_spec({**scraped, "kv_budgets": bad})
        assert error.value.field == "kv_budgets"


# -- the generator against real servers ------------------------------------------------------------------------
def sweep_spec(base_url: str, metrics_urls: list[str], tmp_path: Path, **overrides) -> dict:
    spec = {
        "base_url": base_url,
        "dialect": "tgi-generate-stream",
        "workload": {"prompt_tokens": 16, "output_tokens": 24},
        "sampling": {"ignore_eos": True},
        "steps": [{"concurrency": 1}, {"concurrency": 4}],
        "warmup_requests": 2,
        "duration_s": 4,
        "seed": 3,
        "metrics_urls": metrics_urls,
        "raw_path": str(tmp_path / "raw.jsonl"),
    }
    return {**spec, **overrides}


def check_sweep(run, server: str) -> None:
    assert run.code == EXIT_OK, run.stderr[-2000:]
    one, four = run.of("metric")
    for step in (one, four):
        assert not step["has_errors"] and step["requests_ok"] > 0, step
        assert "server_metrics_error" not in step, step["server_metrics_error"]
        for name in SERVER_FIGURES:
            assert step[name] is not None, (name, step)
        # The server's own per-token time agrees with the ITL the client measured from token arrivals.
        timing = step["server_timing"]
        assert timing["timing_disagrees"] is False, (server, step["concurrency"], timing)
        assert abs(step["itl_ms_mean"] - step["server_itl_ms_mean"]) <= timing["tolerance_ms"]
    # Four callers keep several sequences in the server's batch at once; one caller never more than one.
    assert one["batch_size_max"] <= 1 < four["batch_size_max"], (one["batch_size_max"], four["batch_size_max"])
    assert four["batch_size"] > one["batch_size"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    need(ml_python() is not None, "the ML environment (make ml-env) is needed to run serve.py")
    return make_model(tmp_path_factory.mktemp("models") / "tiny")


def test_a_sweep_against_serve_py_reports_the_servers_queue_batch_and_per_token_time(tiny_model, tmp_path):
    server = ServeProcess(tiny_model, "--max-input-tokens", "200", "--max-total-tokens", "256").start()
    try:
        server.wait_ready()
        run = run_loadgen(sweep_spec(server.url, [f"{server.url}/metrics"], tmp_path), tmp_path, timeout=120)
    finally:
        server.stop()
    check_sweep(run, "serve.py")
    assert all(step["server_metrics_dialect"] == "tgi" for step in run.of("metric"))
    # TGI has no KV gauge: the fill is the batch token budget's, from /info (tests/workers/test_loadgen_gpu.py).
    assert all(step["kv_cache_usage_max"] is not None for step in run.of("metric"))


def test_a_sweep_against_vllm_serve_py_reports_the_kv_cache_too(tiny_model, tmp_path):
    server = VllmProcess(tiny_model, "--served-model-name", "tiny", "--max-model-len", "256").start()
    try:
        server.wait_ready()
        spec = sweep_spec(server.url, [f"{server.url}/metrics"], tmp_path, dialect="openai-completion", model="tiny")
        run = run_loadgen(spec, tmp_path, timeout=120)
    finally:
        server.stop()
    check_sweep(run, "vllm_serve.py")
    four = run.of("metric")[1]
    assert four["server_metrics_dialect"] == "vllm" and 0 < four["kv_cache_usage_max"] <= 1


def test_an_unreachable_metrics_url_leaves_the_figures_empty_and_says_why(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/metrics"
    with StampingUpstream(free_port(), delay=0.002, first_delay=0.01) as upstream:
        # One server refuses connections; the other answers /metrics with 404 (it is no model server).
        spec = sweep_spec(upstream.url, [closed, f"{upstream.url}/metrics"], tmp_path, duration_s=1.2)
        run = run_loadgen(spec, tmp_path)
    assert run.code == EXIT_OK, run.stderr[-2000:]
    steps = run.of("metric")
    assert len(steps) == 2
    for step in steps:
        assert not step["has_errors"] and step["requests_ok"] > 0
        assert all(step[name] is None for name in (*SERVER_FIGURES, "kv_cache_usage_max", "server_queue_ms_mean"))
        assert "server_timing" not in step
        error = step["server_metrics_error"]
        assert closed in error and re.search(r"refused", error, re.I), error
        assert f"{upstream.url}/metrics" in error

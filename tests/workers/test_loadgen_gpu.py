"""The load generator's GPU and KV figures per step: the busiest of the server's GPUs through NVML
(workers/jobs/loadgen_gpu.py), and TGI's KV fill as its batch token gauge over /info's max_batch_total_tokens
(workers/jobs/loadgen_metrics.py).

NVML here is tests/support/fake_nvml.py: no GPU runs on the development machines, so the busy readings are made
up (FAKE_NVML_UTILIZATION); the idle one is the fixture's real H200 reading (0 %)."""

from __future__ import annotations

import http.server
import json
import threading

import pytest
import requests

from tests.support.serve_process import ROOT, ServeProcess, free_port
from tests.support.stamping_upstream import StampingUpstream
from tests.workers.test_loadgen import run_loadgen
from tests.workers.test_loadgen_metrics import sweep_spec, tiny_model  # noqa: F401 (a fixture)
from workers.jobs.loadgen_metrics import ServerMetrics
from workers.jobs.loadgen_spec import parse_spec
from workers.jobs.protocol import EXIT_OK, BadInput

FAKE = "tests.support.fake_nvml"
TGI_AFTER = (ROOT / "tests/fixtures/server-metrics/tgi-3-after.prom").read_text()


@pytest.fixture(scope="module")
def upstream():
    with StampingUpstream(free_port(), delay=0.002, first_delay=0.01) as server:
        yield server


def gpu_sweep(upstream, tmp_path, **overrides) -> list[dict]:
    spec = sweep_spec(upstream.url, [], tmp_path, **{"duration_s": 1.2, "nvml_module": FAKE, **overrides})
    del spec["metrics_urls"]
    run = run_loadgen(spec, tmp_path)
    assert run.code == EXIT_OK, run.stderr[-2000:]
    steps = run.of("metric")
    assert len(steps) == 2 and all(not s["has_errors"] and s["requests_ok"] > 0 for s in steps)
    return steps


def test_a_sweep_reports_the_busiest_of_the_servers_gpus(upstream, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_GPUS", "4")
    monkeypatch.setenv("FAKE_NVML_UTILIZATION", "40,97,10")  # GPU 0: 40 %, GPU 1: 97 %, GPUs 2 and 3: 10 %
    for step in gpu_sweep(upstream, tmp_path, gpu_indexes=[0, 1]):
        assert step["gpu_utilization_max"] == 0.97 and step["gpu_utilization_mean"] == 0.97
        assert step["gpu_utilization_samples"] >= 2 and step["gpu_indexes"] == [0, 1]
        assert "gpu_metrics_error" not in step and "server_metrics_samples" not in step  # no /metrics was named
    # GPU 1 is not the server's: its readings never count.
    for step in gpu_sweep(upstream, tmp_path, gpu_indexes=[2, 0]):
        assert step["gpu_utilization_max"] == 0.4 and step["gpu_indexes"] == [0, 2]


def test_an_idle_gpu_reads_zero_the_fixtures_real_reading(upstream, tmp_path, monkeypatch):
    monkeypatch.delenv("FAKE_NVML_UTILIZATION", raising=False)
    for step in gpu_sweep(upstream, tmp_path, gpu_indexes=[0]):
        assert step["gpu_utilization_max"] == 0.0 and step["gpu_utilization_mean"] == 0.0


@pytest.mark.parametrize(
    ("env", "overrides", "says"),
    [
        ({"FAKE_NVML_MISSING": "1"}, {}, "NVML is not available: NVML Shared Library Not Found"),
        ({}, {"nvml_module": "no_such_nvml_module"}, "NVML is not available: No module named 'no_such_nvml_module'"),
        ({"FAKE_NVML_GPUS": "1"}, {"gpu_indexes": [3]}, "NVML cannot read GPU(s) 3"),
    ],
)
def test_without_nvml_the_steps_succeed_with_no_gpu_figures_and_say_why(
    upstream, tmp_path, monkeypatch, env, overrides, says
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for step in gpu_sweep(upstream, tmp_path, **{"gpu_indexes": [0], **overrides}):
        assert "gpu_utilization_max" not in step and "gpu_utilization_mean" not in step
        assert step["gpu_metrics_error"].startswith(says), step["gpu_metrics_error"]


def test_the_spec_takes_gpu_indexes_and_a_module_name_and_refuses_others():
    base = {"base_url": "http://x", "dialect": "tgi-generate-stream", "workload": {"prompt_tokens": 4,
            "output_tokens": 4}, "steps": [{"concurrency": 1}], "requests": 1}  # fmt: skip
    spec = parse_spec(base)
    assert spec.gpu_indexes == () and spec.nvml_module == "pynvml"
    spec = parse_spec({**base, "gpu_indexes": [1, 0, 1], "nvml_module": FAKE})
    assert spec.gpu_indexes == (0, 1) and spec.nvml_module == FAKE
    for field, bad in [("gpu_indexes", 0), ("gpu_indexes", [-1]), ("gpu_indexes", [True]), ("gpu_indexes", ["0"]),
                       ("nvml_module", "os; rm"), ("nvml_module", ".x"), ("nvml_module", 3)]:  # fmt: skip
        with pytest.raises(BadInput) as error:
            parse_spec({**base, field: bad})
        assert error.value.field == field


# -- TGI's KV fill -------------------------------------------------------------------------------------------------
class TgiRouter:
    """A real HTTP server answering /metrics (TGI 3.x's exposition) and /info (`info`, None: 404)."""

    def __init__(self, info: dict | None) -> None:
        self.info_reads = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path == "/info":
                    owner.info_reads += 1
                body = {"/metrics": TGI_AFTER, "/info": json.dumps(info) if info is not None else None}.get(self.path)
                payload = (body or "").encode()
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/metrics"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def figures(self, kv_budgets: dict | None = None) -> dict:
        try:
            sampler = ServerMetrics([self.url], period_s=0.05, kv_budgets=kv_budgets).start()
            threading.Event().wait(0.3)
            sampler.stop()
            return sampler.figures()
        finally:
            self.httpd.shutdown()
            self.httpd.server_close()


@pytest.mark.parametrize(("budget", "fill"), [(16_000, 5120 / 16_000), (4_000, 1.0)])  # 5120: the fixture's gauge
def test_tgis_kv_fill_is_its_batch_token_budget_filled(budget, fill):
    router = TgiRouter({"model_id": "m", "max_batch_total_tokens": budget})
    figures = router.figures()
    assert figures["batch_tokens"] == 5120 and figures["kv_cache_usage_max"] == pytest.approx(fill)
    assert router.info_reads == 1 and "kv_cache_usage_error" not in figures  # /info once, not every sample


def test_a_tgi_3_gets_its_budget_from_the_routers_warm_up_line_and_reads_no_info():
    router = TgiRouter({"model_id": "m", "router": "text-generation-router"})  # TGI 3.x: no budget in /info
    figures = router.figures(kv_budgets={router.url: 10_240})
    assert figures["kv_cache_usage_max"] == pytest.approx(5120 / 10_240) and "kv_cache_usage_error" not in figures
    assert router.info_reads == 0


@pytest.mark.parametrize(("info", "says"), [({"model_id": "m", "router": "text-generation-router"}, "reports no"),
                                            (None, "HTTP 404")])  # fmt: skip
def test_a_tgi_without_the_budget_in_info_leaves_the_kv_fill_empty_and_says_why(info, says):
    router = TgiRouter(info)
    figures = router.figures()
    assert figures["kv_cache_usage_max"] is None and figures["queue_size"] == 3  # the rest still read
    error = figures["kv_cache_usage_error"]
    assert error.startswith(router.url.removesuffix("/metrics") + "/info") and says in error, error
    assert "server_metrics_error" not in figures


def test_a_sweep_against_serve_py_reports_the_kv_fill_from_its_info(tiny_model, tmp_path):  # noqa: F811
    server = ServeProcess(tiny_model, "--max-input-tokens", "200", "--max-total-tokens", "256").start()
    try:
        server.wait_ready()
        info = requests.get(f"{server.url}/info", timeout=5).json()
        run = run_loadgen(sweep_spec(server.url, [f"{server.url}/metrics"], tmp_path), tmp_path, timeout=120)
    finally:
        server.stop()
    assert run.code == EXIT_OK, run.stderr[-2000:]
    budget = info["max_batch_total_tokens"]
    assert isinstance(budget, int) and budget >= 256  # at least one whole request (max_total_tokens)
    one, four = run.of("metric")
    for step in (one, four):
        assert step["kv_cache_usage_max"] == pytest.approx(step["batch_tokens"] / budget)
        assert "kv_cache_usage_error" not in step
    assert 0 < one["kv_cache_usage_max"] < four["kv_cache_usage_max"] <= 1  # four callers hold more of it

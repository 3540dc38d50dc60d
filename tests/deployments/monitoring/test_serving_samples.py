"""Deployment samples from the inference log and the servers' own /metrics: a minute's requests, errors, tokens,
tokens/s and latency percentiles land in that minute's sample; the queue is read from each server's /metrics (TGI's
tgi_queue_size, vLLM's vllm:num_requests_waiting, as serve.py's exporters write them) with the server's key, the
way the gateway reaches it; a record sealed a minute late still lands in its own minute."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deployments.gateway import records
from deployments.models import Deployment
from deployments.monitoring import serving_samples
from deployments.monitoring.models import DeploymentSample
from tests.factories import DeploymentFactory
from workers.jobs.serve_metrics import Metrics, VllmMetrics

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 6, 1, 10, 0, 30, tzinfo=UTC)  # half a minute into 10:00: 09:59 has just ended
MINUTE_0959 = datetime(2026, 6, 1, 9, 59, tzinfo=UTC)
MINUTE_0958 = datetime(2026, 6, 1, 9, 58, tzinfo=UTC)


class MetricsServer:
    """A model server's /metrics over real HTTP, answering only with its key (as a server started by the console
    would be reached); it keeps the Authorization headers it was sent."""

    def __init__(self, text: str, key: str) -> None:
        self.text, self.key, self.seen = text, key, []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                owner.seen.append(self.headers.get("Authorization"))
                ok = self.path == "/metrics" and self.headers.get("Authorization") == f"Bearer {owner.key}"
                body = owner.text.encode() if ok else b"unauthorized"
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers():
    tgi = Metrics(max_input_tokens=128, max_total_tokens=256)
    tgi.set("tgi_queue_size", 3)
    tgi.set("tgi_batch_current_size", 8)
    vllm = VllmMetrics(model_name="m", max_model_len=256, cache_info={}, max_loras=None)
    vllm.set("vllm:num_requests_waiting", 2)
    started = {"tgi": MetricsServer(tgi.render(), "tgi-key"), "vllm": MetricsServer(vllm.render(), "vllm-key")}
    yield started
    for server in started.values():
        server.close()


def record(deployment: Deployment, at: datetime, *, status=200, duration=100.0, ttft=20.0, prompt=10, completion=60):
    """One call through the gateway, sealed into the inference log as the gateway's flusher does."""
    records.seal(
        [
            {
                "request_id": uuid.uuid4().hex,
                "deployment_id": deployment.pk,
                "deployment_name": deployment.name,
                "route": "openai.chat",
                "started_at": at,
                "status": status,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "ttft_ms": ttft,
                "duration_ms": duration,
            }
        ]
    )


def test_a_minute_of_calls_and_the_servers_queues_become_samples(servers):
    chat = DeploymentFactory(
        name="chat", state=Deployment.State.RUNNING, endpoint=servers["tgi"].url, server_key="tgi-key"
    )
    vllm = DeploymentFactory(
        name="vchat", state=Deployment.State.RUNNING, endpoint=servers["vllm"].url + "/", server_key="vllm-key"
    )
    idle_down = DeploymentFactory(name="down", state=Deployment.State.RUNNING, endpoint="http://127.0.0.1:9")
    stopped = DeploymentFactory(name="stopped", state=Deployment.State.STOPPED)
    durations = [100.0, 200.0, 300.0, 400.0, 1000.0]
    for second, duration in enumerate(durations):
        record(chat, MINUTE_0959 + timedelta(seconds=10 * second), duration=duration, ttft=10.0 * (second + 1))
    record(chat, MINUTE_0959 + timedelta(seconds=55), status=503, duration=5.0, ttft=None, completion=0)
    record(chat, NOW, duration=9999)  # the minute still running: not sampled yet
    record(stopped, MINUTE_0959 + timedelta(seconds=1), completion=30)

    assert serving_samples.take_samples(now=NOW) == 4  # chat, vchat, down (running), stopped (called)
    sample = DeploymentSample.objects.get(deployment=chat, at=MINUTE_0959)
    assert sample.resolution == 60
    assert (sample.requests, sample.errors, sample.prompt_tokens, sample.completion_tokens) == (6, 1, 60, 300)
    assert sample.tokens_per_s == 5.0  # 300 completion tokens over the minute
    # durations 5, 100, 200, 300, 400, 1000 ms: p50 halfway between 200 and 300, p95 at rank 4.75
    assert sample.latency_p50_ms == 250.0 and sample.latency_p95_ms == 850.0
    assert sample.ttft_p50_ms == 30.0  # of 10..50 ms; the refused call had no first token
    assert sample.queue == 3.0
    assert DeploymentSample.objects.get(deployment=vllm, at=MINUTE_0959).queue == 2.0
    quiet = DeploymentSample.objects.get(deployment=idle_down, at=MINUTE_0959)
    assert (quiet.requests, quiet.tokens_per_s, quiet.latency_p50_ms, quiet.queue) == (0, None, None, None)
    called = DeploymentSample.objects.get(deployment=stopped)
    assert (called.requests, called.completion_tokens, called.queue) == (1, 30, None)
    assert servers["tgi"].seen == ["Bearer tgi-key"] and servers["vllm"].seen == ["Bearer vllm-key"]


def test_a_record_sealed_late_lands_in_its_own_minute_and_the_queue_stays(servers):
    chat = DeploymentFactory(
        name="chat", state=Deployment.State.RUNNING, endpoint=servers["tgi"].url, server_key="tgi-key"
    )
    record(chat, MINUTE_0958 + timedelta(seconds=5))
    serving_samples.take_samples(now=NOW - timedelta(minutes=1))  # at 09:59:30, 09:58 ended with one call
    first = DeploymentSample.objects.get(deployment=chat, at=MINUTE_0958)
    assert (first.requests, first.queue) == (1, 3.0)
    record(chat, MINUTE_0958 + timedelta(seconds=50), status=500)  # sealed after that run
    serving_samples.take_samples(now=NOW)
    again = DeploymentSample.objects.get(deployment=chat, at=MINUTE_0958)
    assert (again.requests, again.errors, again.queue) == (2, 1, 3.0)
    assert DeploymentSample.objects.filter(deployment=chat).count() == 2  # 09:58 and 09:59, once each


def test_percentiles_interpolate_between_ranks():
    assert serving_samples.percentile([], 50) is None
    assert serving_samples.percentile([7.0], 95) == 7.0
    assert serving_samples.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5

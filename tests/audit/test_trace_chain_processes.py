"""One trace across the real processes: an API client's span, the console's request span (this process, in memory),
the Celery task, the launch job and its runtime call in a real agent worker, and the gateway's `model_inference`
span in the real gateway; the worker and the gateway export over OTLP/HTTP to a collector this test runs."""

from __future__ import annotations

import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from django.conf import settings
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as OtlpSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from audit import telemetry
from deployments.gateway import keys
from deployments.models import Deployment, Job, ModelArtifact
from tests.conftest import _test_database_url, need
from tests.deployments.serving.test_e2e import _poll, _register_host_and_model, _state
from tests.factories import DeploymentFactory, DeploymentSpecFactory
from tests.support.agent import Agent
from tests.support.gateway_process import GatewayProcess
from tests.support.serve_process import ml_python

pytestmark = pytest.mark.django_db(transaction=True)


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver (protobuf on /v1/traces), keeping every span as a dict."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Receive)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def named(self, name: str, trace_id: str) -> list[dict]:
        with self.lock:
            return [s for s in self.spans if s["name"] == name and s["trace_id"] == trace_id]


class _Receive(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.send_error(404)
            return
        export = ExportTraceServiceRequest.FromString(body)
        received = []
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        {
                            "service": resource.get("service.name"),
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "kind": span.kind,
                            "attributes": {a.key: a.value for a in span.attributes},
                        }
                    )
        with self.server.lock:
            self.server.spans.extend(received)
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


class ChatServer(ThreadingHTTPServer):
    """A model server's OpenAI chat route (the GPU's stand-in) that notes the traceparent of each call it gets."""

    def __init__(self) -> None:
        self.traceparents: list[str] = []
        super().__init__(("127.0.0.1", 0), _Chat)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Chat(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.traceparents.append(self.headers.get("traceparent", ""))
        message = {"role": "assistant", "content": "hi"}
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        if body.get("stream"):
            chunks = [
                {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": message, "finish_reason": None}]},
                {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                {"object": "chat.completion.chunk", "choices": [], "usage": usage},
            ]
            payload = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            kind = "text/event-stream"
        else:
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            payload, kind = (
                json.dumps({"object": "chat.completion", "choices": [choice], "usage": usage}),
                "application/json",
            )
        data = payload.encode()
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def _serve(server: ThreadingHTTPServer):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def chat_server():
    yield from _serve(ChatServer())


@pytest.fixture
def collector():
    yield from _serve(Collector())


def _otel_env(collector: Collector, service: str) -> dict[str, str]:
    # Exported within a tenth of a second, so the test does not wait for the default five.
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


@pytest.fixture
def web_spans():
    telemetry.configure(force=True)  # this process is the console's web process
    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.clear()


def _hex(number: int, width: int = 32) -> str:
    return format(number, f"0{width}x")


def _wait_for(collector: Collector, name: str, trace_id: str, timeout: float = 30) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = collector.named(name, trace_id)
        if found:
            return found
        time.sleep(0.1)
    with collector.lock:
        seen = sorted({(s["service"], s["name"]) for s in collector.spans})
    raise AssertionError(f"no {name} span in trace {trace_id}; the collector has {seen}")


def test_one_trace_from_the_api_call_through_the_task_job_runtime_and_gateway(
    redis_url, admin, api, collector, web_spans, chat_server
):
    need(ml_python() is not None, "the ML environment (make ml-env) runs serve.py")
    name = f"trace-{os.getpid()}"
    agent = Agent(redis_url, name, **_otel_env(collector, "llmdeploy-agent"))
    gateway_env = dict(
        os.environ,
        DATABASE_URL=_test_database_url(),
        REDIS_URL=redis_url,
        DATA_DIR=str(settings.DATA_DIR),
        GATEWAY_CACHE_SECONDS="0",
        GATEWAY_FLUSH_SECONDS="0.2",
        PYTHONUNBUFFERED="1",
        **_otel_env(collector, "llmdeploy-gateway"),
    )
    gateway = GatewayProcess(gateway_env).start()
    admin_api = api(admin)
    deployment_id = None
    try:
        artifact_id = _register_host_and_model(admin_api, name)
        # An API client that traces its own work: its span is the root, its traceparent goes with each call.
        with telemetry.tracer.start_as_current_span("client: deploy and ask", kind=SpanKind.CLIENT) as client:
            traceparent = telemetry.current_traceparent()
            spec = {"artifact": artifact_id, "device": "gpu", "max_input_tokens": 200, "max_total_tokens": 256}
            created = admin_api.post(
                "/api/v1/deployments/", {"name": "traced", "spec_input": spec}, HTTP_TRACEPARENT=traceparent
            ).data
            deployment_id = created["id"]
            running = _poll(
                lambda: _state(admin_api, deployment_id), lambda d: d["state"] in ("running", "failed"), what="running"
            )
            assert running["state"] == "running", running["failure_detail"]
            traced = Deployment.objects.get(pk=deployment_id)
            # A second deployment whose server notes what the gateway sends it.
            echo = DeploymentFactory(
                name="echo", state=Deployment.State.RUNNING, endpoint=chat_server.url, server_key="k", host=traced.host
            )
            DeploymentSpecFactory(deployment=echo, artifact=ModelArtifact.objects.get(pk=artifact_id), current=True)
            _key, raw = keys.key_create(actor=admin, name="traced", user=admin, deployments=[traced, echo])
            for model in ("traced", "echo"):
                answer = requests.post(
                    f"{gateway.url}/v1/chat/completions",
                    json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
                    headers={"Authorization": f"Bearer {raw}", "traceparent": traceparent},
                    timeout=60,
                )
                assert answer.status_code == 200, answer.text
        trace_id = _hex(client.get_span_context().trace_id)
        root_id = _hex(client.get_span_context().span_id, 16)

        # The console's request span (this process): a child of the client's. (Here the client runs in the console's
        # process, so the request continues its current span; a remote client's arrives by the header.)
        in_trace = [s for s in web_spans.get_finished_spans() if _hex(s.context.trace_id) == trace_id]
        [request] = [s for s in in_trace if s.name.startswith("POST") and s.parent.span_id == int(root_id, 16)]
        parents = {_hex(s.context.span_id, 16): s for s in in_trace}
        launch = Job.objects.get(kind=Job.Kind.SERVE, target_id=str(deployment_id))
        assert launch.traceparent.split("-")[1] == trace_id
        # The span the job was created in is the request's or one below it (a service's).
        creator = parents[launch.traceparent.split("-")[2]]
        while creator is not request:  # a KeyError: a span outside the request's
            creator = parents[_hex(creator.parent.span_id, 16)]

        # The gateway's span for each call (the gateway process, over OTLP): a child of the client's; the model
        # server gets the client's span as its parent, so its own spans (a server that traces) join the trace.
        deadline = time.monotonic() + 30
        while len(collector.named("model_inference", trace_id)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        inferences = collector.named("model_inference", trace_id)
        assert sorted(s["attributes"]["gen_ai.request.model"].string_value for s in inferences) == ["echo", "traced"]
        assert all(s["service"] == "llmdeploy-gateway" and s["parent_span_id"] == root_id for s in inferences)
        assert [t.split("-")[1:3] for t in chat_server.traceparents] == [[trace_id, root_id]]

        # The task, the job and the runtime (the agent, over OTLP): task <- job <- runtime.start, the task a child
        # of the span the job was created in.
        admin_api.post(f"/api/v1/deployments/{deployment_id}/stop/", expected=200)
        _poll(lambda: _state(admin_api, deployment_id)["state"], lambda s: s == "stopped", what="stopped")
        [job_span] = _wait_for(collector, "job serve", trace_id)
        tasks = {s["span_id"]: s for s in collector.named("run/workers.run_job", trace_id)}
        task = tasks[job_span["parent_span_id"]]
        assert (
            task["service"] == job_span["service"] == "llmdeploy-agent" and task["kind"] == OtlpSpan.SPAN_KIND_CONSUMER
        )
        assert task["parent_span_id"] == launch.traceparent.split("-")[2]
        [start] = _wait_for(collector, "runtime.start", trace_id)
        assert start["parent_span_id"] == job_span["span_id"]
        assert start["attributes"]["llmdeploy.runtime"].string_value == "process"
        stops = collector.named("runtime.stop", trace_id)
        assert job_span["span_id"] in {s["parent_span_id"] for s in stops}  # the job stops its server
    finally:
        if deployment_id is not None and _state(admin_api, deployment_id)["state"] not in ("stopped", "failed"):
            admin_api.post(f"/api/v1/deployments/{deployment_id}/stop/", expected=200)
            _poll(lambda: _state(admin_api, deployment_id)["state"], lambda s: s in ("stopped", "failed"), what="stop")
        gateway.stop()
        agent.stop()

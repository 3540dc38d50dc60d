"""One trace from a request to the work it started: the job keeps the request's traceparent and runs in a span
`job <kind>` in that trace (also when dispatched again from elsewhere), the runtime's start and stop are spans in the
job's, the playground's call carries its traceparent to the model server, and trace ids on the job and audit pages
link to the tracing UI when TRACING_UI_URL is set. (tests/audit/test_trace_chain_processes.py: the same chain across
a real worker and the gateway, exported over OTLP.)"""

from __future__ import annotations

import json
import sys

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import audit
from audit import telemetry
from audit.models import AuditEvent
from audit.templatetags.trace_tags import trace_id_of
from deployments.jobs.services import job_create
from deployments.models import Job
from deployments.serving import playground
from tests.factories import DeploymentFactory, DeploymentSpecFactory, HostFactory
from tests.support.aio import run_async
from workers import runner
from workers.runtimes.base import RunSpec
from workers.runtimes.process import ProcessRuntime

pytestmark = pytest.mark.django_db
TRACE_UI = "http://jaeger.example:16686/trace/{trace_id}"


@runner.register("test.trace_rt")
class StartsAProgram(runner.Handler):
    """Starts a short program through the process runtime and stops it: the runtime calls a job makes."""

    def run(self, ctx: runner.JobContext) -> dict:
        runtime = ProcessRuntime()
        spec = RunSpec(
            name=f"trace-{ctx.job.pk}",
            labels={},
            args=[],
            env={},
            model_dir="",
            model_store="",
            program=[sys.executable, "-c", "import time; time.sleep(30)"],
        )
        handle = runtime.start(spec)
        runtime.remove(handle)  # stops it first
        return {}


@pytest.fixture
def spans():
    telemetry.configure(force=True)  # as OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_ENABLED would
    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.clear()


def _hex(number: int, width: int = 32) -> str:
    return format(number, f"0{width}x")


def _named(exporter: InMemorySpanExporter, name: str):
    return [s for s in exporter.get_finished_spans() if s.name == name]


def _by_span_id(exporter: InMemorySpanExporter, span_id: str):
    [span] = [s for s in exporter.get_finished_spans() if _hex(s.context.span_id, 16) == span_id]
    return span


def _ancestors(exporter: InMemorySpanExporter, span) -> list[str]:
    """The names of the span and the spans above it, up to the root."""
    names = [span.name]
    while span.parent is not None:
        span = _by_span_id(exporter, _hex(span.parent.span_id, 16))
        names.append(span.name)
    return names


def test_a_job_started_by_an_api_call_keeps_its_trace_and_runs_as_a_child_of_the_request(api, admin, spans, settings):
    host = HostFactory(name="trace-host", runtime="process", model_store=str(settings.MODEL_STORE))
    directory = f"{settings.MODEL_STORE}/trace-import-missing"
    created = api(admin).post("/api/v1/models/import/", {"host": host.name, "directory": directory}, expected=202)
    [request] = [s for s in spans.get_finished_spans() if s.name.startswith("POST")]
    job = Job.objects.get(kind=Job.Kind.IMPORT, target_id=str(created.data["id"]))
    # The job keeps the span it was created in (the import service's, inside the request's) as its parent-to-be.
    creator = _by_span_id(spans, job.traceparent.split("-")[2])
    assert creator.context.trace_id == request.context.trace_id
    assert _ancestors(spans, creator)[-1] == request.name

    # Run later, in a process with no span of its own (a worker without Celery's instrumentation): still the trace.
    outcome = runner.run(job.pk)
    [job_span] = _named(spans, "job import")
    assert job_span.context.trace_id == request.context.trace_id
    assert job_span.parent.span_id == creator.context.span_id and job_span.parent.is_remote
    assert job_span.attributes["llmdeploy.job.id"] == job.pk and job_span.attributes["llmdeploy.job.outcome"] == outcome
    job.refresh_from_db()
    assert outcome == job.status == Job.Status.FAILED  # the directory is not there
    assert not job_span.status.is_ok
    # What the job audited carries the trace id too.
    assert AuditEvent.objects.get(action="job.failed", target_id=str(job.pk)).trace_id == _hex(request.context.trace_id)


def test_the_runtime_calls_of_a_job_are_spans_inside_the_job_span(admin, spans):
    with telemetry.tracer.start_as_current_span("request") as request:
        job = job_create(kind="test.trace_rt", actor=admin)
    assert runner.run(job.pk) == Job.Status.SUCCEEDED
    [job_span] = _named(spans, "job test.trace_rt")
    [start] = _named(spans, "runtime.start")
    stops = _named(spans, "runtime.stop")
    assert job_span.parent.span_id == request.get_span_context().span_id
    assert start.parent.span_id == job_span.context.span_id and start.context.trace_id == job_span.context.trace_id
    assert start.attributes["llmdeploy.runtime"] == "process"
    assert start.attributes["llmdeploy.server.name"] == f"trace-{job.pk}"
    assert stops and all(s.context.trace_id == job_span.context.trace_id for s in stops)
    assert start.end_time <= stops[0].start_time


def test_a_task_carrying_the_jobs_trace_is_the_parent_and_a_dispatch_from_elsewhere_is_only_linked(admin, spans):
    with telemetry.tracer.start_as_current_span("request"):
        first = job_create(kind="test.trace_rt", actor=admin)
        second = job_create(kind="test.trace_rt", actor=admin)
        # What Celery's message headers carry: the current traceparent, as the job's.
        assert telemetry.trace_headers() == {"traceparent": first.traceparent}
    request_context = telemetry.context_from_traceparent(first.traceparent)
    # The Celery task that carried the request's trace (its consumer span continues it): the job's parent.
    with telemetry.tracer.start_as_current_span("run/workers.run_job", context=request_context, kind=SpanKind.CONSUMER):
        task = trace.get_current_span().get_span_context()
        runner.run(first.pk)
    # A task in another trace (the reaper's, dispatching a lost job again): the job stays in its request's trace,
    # linked to that task.
    with telemetry.tracer.start_as_current_span("run/workers.jobs_reap") as reaper:
        runner.run(second.pk)
    carried, redispatched = _named(spans, "job test.trace_rt")
    request_trace = int(trace_id_of(first.traceparent), 16)
    assert carried.context.trace_id == redispatched.context.trace_id == request_trace
    assert carried.parent.span_id == task.span_id and not carried.links
    assert redispatched.parent.span_id == int(second.traceparent.split("-")[2], 16)
    assert [link.context.span_id for link in redispatched.links] == [reaper.get_span_context().span_id]


def test_a_job_created_outside_any_trace_has_no_traceparent_and_still_runs(admin):
    job = job_create(kind="test.trace_rt", actor=admin)
    assert job.traceparent == "" and runner.run(job.pk) == Job.Status.SUCCEEDED


async def _chat_server(seen: list[str]) -> web.AppRunner:
    """A model server's OpenAI chat stream (the GPU's stand-in), noting each call's traceparent."""

    async def chat(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("traceparent", ""))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for chunk in (
            {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {"content": "!"}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
        ):
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner_ = web.AppRunner(app)
    await runner_.setup()
    await web.TCPSite(runner_, "127.0.0.1", 0).start()
    return runner_


@pytest.mark.django_db(transaction=True)
def test_the_playground_call_is_a_span_whose_traceparent_the_model_server_receives(spans):
    deployment = DeploymentFactory(name="traced", state="running", endpoint="http://127.0.0.1:1")
    DeploymentSpecFactory(deployment=deployment, current=True)
    seen: list[str] = []

    async def use() -> list[dict]:
        server = await _chat_server(seen)
        port = server.addresses[0][1]
        deployment.endpoint = f"http://127.0.0.1:{port}"
        try:
            messages = [{"role": "user", "content": "hello"}]
            return [e async for e in playground.run(deployment, mode="chat", messages=messages)]
        finally:
            await server.cleanup()

    events = run_async(use())
    assert [e["text"] for e in events if e["type"] == "token"] == ["hi", "!"]
    [span] = _named(spans, "playground chat")
    assert span.kind == SpanKind.CLIENT and span.attributes["llmdeploy.deployment.id"] == deployment.pk
    flags = format(span.context.trace_flags, "02x")
    assert seen == [f"00-{_hex(span.context.trace_id)}-{_hex(span.context.span_id, 16)}-{flags}"]
    assert span.attributes["gen_ai.usage.output_tokens"] == 2


def test_job_page_shows_the_trace_id_linked_to_the_tracing_ui_when_set(client, admin, settings):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    job = Job.objects.create(kind=Job.Kind.IMPORT, actor=admin, traceparent=f"00-{trace_id}-00f067aa0ba902b7-01")
    client.force_login(admin)
    settings.TRACING_UI_URL = ""
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'<code class="text-break" data-field="trace_id">{trace_id}</code>' in page
    assert "data-trace-link" not in page
    settings.TRACING_UI_URL = TRACE_UI
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert (
        f'<a href="http://jaeger.example:16686/trace/{trace_id}" target="_blank" rel="noopener" data-trace-link>'
        in page
    )
    untraced = Job.objects.create(kind=Job.Kind.IMPORT, actor=admin)
    assert "Trace id" not in client.get(f"/jobs/{untraced.pk}/").content.decode()


def _row(page: str, event: AuditEvent) -> str:
    row = page[page.index(f'data-seq="{event.id}"') :]
    return row[: row.index("</details>")]


def test_audit_rows_show_the_event_trace_id_linked_when_the_tracing_ui_is_set(client, auditor, admin, settings, spans):
    with telemetry.tracer.start_as_current_span("traced"):
        traced = AuditEvent.objects.get(pk=audit.record(action="deployment.start", actor=admin).pk)
    untraced = AuditEvent.objects.get(pk=audit.record(action="deployment.stop", actor=admin).pk)
    assert len(traced.trace_id) == 32 and untraced.trace_id == ""
    client.force_login(auditor)
    settings.TRACING_UI_URL = ""
    page = client.get("/audit/", {"action": "deployment."}).content.decode()
    row = _row(page, traced)
    assert f'data-field="trace_id">{traced.trace_id}</code>' in row and "data-trace-link" not in row
    assert 'data-part="trace" hidden' in _row(page, untraced)
    settings.TRACING_UI_URL = TRACE_UI
    page = client.get("/audit/", {"action": "deployment."}).content.decode()
    assert f'href="http://jaeger.example:16686/trace/{traced.trace_id}"' in _row(page, traced)
    assert "data-trace-link" not in _row(page, untraced)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4bf92f3577b34da6a3ce929d0e0e4736", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("0" * 32, ""),
        ('"><script>', ""),
        ("", ""),
    ],
)
def test_only_a_trace_id_or_a_traceparent_makes_a_trace_id(value, expected):
    assert trace_id_of(value) == expected


def test_a_click_on_a_page_starts_a_job_in_its_trace_and_the_job_page_links_to_it(client, admin, spans, settings):
    settings.TRACING_UI_URL = TRACE_UI
    host = HostFactory(name="click-host", runtime="process", model_store=str(settings.MODEL_STORE))
    client.force_login(admin)
    directory = f"{settings.MODEL_STORE}/clicked"
    response = client.post("/models/import/", {"host": host.pk, "directory": directory, "name": "clicked"})
    assert response.status_code == 302
    [click] = [s for s in spans.get_finished_spans() if s.name.startswith("POST")]
    job = Job.objects.get(kind=Job.Kind.IMPORT)
    trace_id = _hex(click.context.trace_id)
    assert trace_id_of(job.traceparent) == trace_id
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert f'href="http://jaeger.example:16686/trace/{trace_id}"' in page

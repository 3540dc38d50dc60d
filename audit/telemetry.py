"""OpenTelemetry: the SDK from the environment, Django and Celery instrumented, spans around
audited operations, and the current trace id for audit events.

With OTEL_EXPORTER_OTLP_ENDPOINT set, the SDK is installed, Django and Celery are instrumented and
spans go to that OTLP/HTTP collector. Without it nothing is installed (OTEL_ENABLED=true installs the
SDK without an exporter): spans are no-ops and events carry no trace id, only their request id.

One trace follows work across processes by W3C traceparent: a job keeps the one it was created under
(`current_traceparent`) and its Celery message carries the current one (`trace_headers`); the runner continues the
job's trace (`span_in_trace`), and the gateway and the playground pass it on to model servers as a header.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_configured = False
tracer = trace.get_tracer("llmdeploy.console")
_PROPAGATOR = TraceContextTextMapPropagator()


def configure(*, force: bool = False) -> None:
    """Install the tracer provider and instrument Django when enabled (or forced). Idempotent."""
    global _configured
    from django.conf import settings

    if _configured or not (force or settings.OTEL_ENABLED):
        return
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "llmdeploy-console")})
    )
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    DjangoInstrumentor().instrument()
    _configured = True


def instrument_celery() -> None:
    """Called in a worker (Celery's worker_init) and in each of its pool's processes (worker_process_init)."""
    configure()
    if not _configured:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    instrumentor = CeleryInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:  # a forked pool process inherits it (and would warn)
        instrumentor.instrument()


def current_trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def current_traceparent() -> str:
    """The W3C traceparent of the current span ("" when there is none, e.g. OpenTelemetry is off)."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def trace_headers() -> dict[str, str]:
    """HTTP or task headers continuing the current trace ({} when there is none)."""
    traceparent = current_traceparent()
    return {"traceparent": traceparent} if traceparent else {}


def context_from_traceparent(traceparent: str) -> otel_context.Context | None:
    """A context whose (remote) span is the one `traceparent` names; None when it names none."""
    if not traceparent:
        return None
    extracted = _PROPAGATOR.extract({"traceparent": traceparent})
    return extracted if trace.get_current_span(extracted).get_span_context().is_valid else None


@contextlib.contextmanager
def span_in_trace(
    name: str, traceparent: str, *, attributes: dict | None = None, kind: SpanKind = SpanKind.INTERNAL
) -> Iterator[trace.Span]:
    """A current span for work that belongs to the trace `traceparent` names (a job's, stored when it was created).

    It is a child of the current span when that is already in the trace (the Celery task that carried it), else of
    the stored traceparent, linked to the current span: a job the reaper dispatched again still joins the trace of
    the request that created it. Without a traceparent it is a child of whatever is current."""
    current = trace.get_current_span().get_span_context()
    stored = context_from_traceparent(traceparent)
    parent, links = None, None
    if stored is not None:
        stored_trace = trace.get_current_span(stored).get_span_context().trace_id
        if not current.is_valid or current.trace_id != stored_trace:
            parent, links = stored, [Link(current)] if current.is_valid else None
    with tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes, links=links) as span:
        yield span


def mark_failed(span: trace.Span, description: str) -> None:
    span.set_status(Status(StatusCode.ERROR, description[:300]))


def traced(name: str) -> Callable:
    """Decorator: run an audited operation inside a span named `name`."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with tracer.start_as_current_span(name):
                return function(*args, **kwargs)

        return wrapper

    return decorate

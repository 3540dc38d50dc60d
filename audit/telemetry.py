"""OpenTelemetry: the SDK from the environment, Django and Celery instrumented, spans around
audited operations, and the current trace id for audit events.

With OTEL_EXPORTER_OTLP_ENDPOINT set, the SDK is installed, Django and Celery are instrumented and
spans go to that OTLP/HTTP collector. Without it nothing is installed (OTEL_ENABLED=true installs the
SDK without an exporter): spans are no-ops and events carry no trace id, only their request id.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from opentelemetry import trace

_configured = False
tracer = trace.get_tracer("llmdeploy.console")


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
    """Called in each worker process (Celery's worker_process_init)."""
    configure()
    if not _configured:
        return
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    CeleryInstrumentor().instrument()


def current_trace_id() -> str:
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


def traced(name: str) -> Callable:
    """Decorator: run an audited operation inside a span named `name`."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with tracer.start_as_current_span(name):
                return function(*args, **kwargs)

        return wrapper

    return decorate

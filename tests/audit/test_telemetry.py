"""OpenTelemetry: a span around each audited operation, and its trace id on the event."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from audit.models import AuditEvent
from console.accounts.services import access

pytestmark = pytest.mark.django_db


@pytest.fixture
def spans():
    from audit import telemetry

    telemetry.configure(force=True)  # as OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_ENABLED would
    exporter = InMemorySpanExporter()
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.clear()


def test_audited_operation_runs_in_a_span_whose_trace_id_is_on_the_event(admin, engineer, spans):
    access.role_grant(actor=admin, user=engineer, role="auditor")
    span = next(s for s in spans.get_finished_spans() if s.name == "role.grant")
    event = AuditEvent.objects.get(action="role.granted")
    assert event.trace_id == format(span.context.trace_id, "032x")


def test_requests_are_traced_by_the_django_instrumentation(client, admin, spans):
    from tests.factories import PASSWORD

    client.post("/login/", {"username": admin.username, "password": PASSWORD})
    request_span = next(s for s in spans.get_finished_spans() if s.name.startswith("POST"))
    login = AuditEvent.objects.get(action="auth.login")
    assert login.trace_id == format(request_span.context.trace_id, "032x")

"""Each gateway call as an OpenTelemetry span named `model_inference`, with the inference record's attributes (never
the prompt or the completion), timed as the call was and placed in the record's trace, so a record found in the log
leads to its trace and back. Spans go where audit/telemetry.py's provider sends them (nowhere when OpenTelemetry is
off: the span is then a no-op)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from audit.telemetry import tracer

SPAN_NAME = "model_inference"
OPERATIONS = {  # the record's route -> gen_ai.operation.name (OpenTelemetry's GenAI conventions)
    "openai.chat": "chat",
    "openai.completions": "text_completion",
    "tgi.generate": "text_completion",
    "tgi.generate_stream": "text_completion",
}
# record field -> span attribute; None values are left out (OpenTelemetry has no null).
ATTRIBUTES = {
    "deployment_name": "gen_ai.request.model",
    "prompt_tokens": "gen_ai.usage.input_tokens",
    "completion_tokens": "gen_ai.usage.output_tokens",
    "status": "http.response.status_code",
    "route": "http.route",
    "client_ip": "client.address",
    "request_id": "llmdeploy.request_id",
    "key_id": "llmdeploy.key.id",
    "key_prefix": "llmdeploy.key.prefix",
    "owner": "llmdeploy.owner",
    "team_id": "llmdeploy.team.id",
    "deployment_id": "llmdeploy.deployment.id",
    "adapter": "llmdeploy.adapter",
    "stream": "llmdeploy.stream",
    "ttft_ms": "llmdeploy.ttft_ms",
    "duration_ms": "llmdeploy.duration_ms",
    "replica": "llmdeploy.replica",
    "error": "llmdeploy.error",
}


def inference_span_attributes(record: dict) -> dict:
    """The span attributes of an inference record: who, which deployment and adapter, tokens, status, timings."""
    attributes = {"gen_ai.system": "llmdeploy"}
    operation = OPERATIONS.get(record.get("route") or "")
    if operation:
        attributes["gen_ai.operation.name"] = operation
    for field, name in ATTRIBUTES.items():
        value = record.get(field)
        if value is None or value == "":
            continue
        attributes[name] = value if isinstance(value, bool | int | float | str) else str(value)
    status = int(record.get("status") or 0)
    if status >= 400:
        attributes["error.type"] = str(status)
    return attributes


def _start_ns(record: dict) -> int | None:
    value = record.get("started_at")
    try:
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1_000_000) * 1000


def _parent_ids(trace_id: str, parent_span_id: str | None, request_id: str) -> tuple[int, int] | None:
    """The call's trace and parent span: the caller's span (parent_span_id, from its traceparent) or a stand-in
    named after the request."""
    try:
        trace_number = int(str(trace_id or ""), 16)
    except ValueError:
        return None
    if not trace_number:
        return None
    try:
        span_id = int(parent_span_id or "", 16)
    except ValueError:
        span_id = 0
    return trace_number, span_id or int(hashlib.sha256(str(request_id).encode()).hexdigest()[:16], 16) or 1


def upstream_traceparent(trace_id: str, parent_span_id: str | None, request_id: str) -> str:
    """The traceparent the gateway sends the model server: the call's own parent, so a server that traces (TGI with
    --otlp-endpoint, vLLM with --otlp-traces-endpoint) puts its spans in the call's trace, beside model_inference."""
    ids = _parent_ids(trace_id, parent_span_id, request_id)
    return f"00-{ids[0]:032x}-{ids[1]:016x}-01" if ids else ""


def _parent(record: dict, parent_span_id: str | None) -> otel_context.Context | None:
    """The record's trace as the span's parent when no span is active: the caller's span (parent_span_id, from its
    traceparent) or a stand-in named after the request, so the span carries the trace id the log shows."""
    if trace.get_current_span().get_span_context().is_valid:
        return None
    ids = _parent_ids(record.get("trace_id") or "", parent_span_id, record.get("request_id"))
    if ids is None:
        return None
    parent = SpanContext(ids[0], ids[1], is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(parent))


def record_span(record: dict, *, parent_span_id: str | None = None) -> None:
    """Emit the `model_inference` span of one finished call (no prompt text), from its start for its duration."""
    start = _start_ns(record)
    span = tracer.start_span(
        SPAN_NAME,
        context=_parent(record, parent_span_id),
        kind=SpanKind.SERVER,
        attributes=inference_span_attributes(record),
        start_time=start,
    )
    status = int(record.get("status") or 0)
    if status >= 500 or status == 0:
        span.set_status(Status(StatusCode.ERROR, str(record.get("error") or "")[:300]))
    end = None
    if start is not None:
        end = start + int(float(record.get("duration_ms") or 0) * 1_000_000)
    span.end(end_time=end)

"""Per-request audit context (request id, client address, trace id, source) and HTML denials."""

from __future__ import annotations

import re
import uuid

from django.http import Http404

from audit import context
from audit.denials import record_denial
from audit.telemetry import current_trace_id

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class AuditContextMiddleware:
    """Sets the audit context for the request and echoes X-Request-ID (a caller's well-formed one is kept)."""

    def __init__(self, get_response) -> None:
        self.get_response = get_response

    def __call__(self, request):
        offered = request.headers.get("X-Request-ID", "")
        request_id = offered if REQUEST_ID.match(offered) else uuid.uuid4().hex
        token = context.set_context(
            context.AuditContext(
                source="api" if request.path.startswith("/api/") else "ui",
                request_id=request_id,
                client_ip=request.META.get("REMOTE_ADDR"),
                trace_id=current_trace_id(),
            )
        )
        try:
            response = self.get_response(request)
        finally:
            context.reset_context(token)
        response["X-Request-ID"] = request_id
        return response

    def process_exception(self, request, exception):
        status = 404 if isinstance(exception, Http404) else 403
        record_denial(exception, user=getattr(request, "user", None), path=request.path, status=status)
        return None

"""Trace ids on pages: shown as code, and linked to the tracing UI (TRACING_UI_URL, "{trace_id}" replaced) when set."""

from __future__ import annotations

import re

from django import template
from django.conf import settings
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()

TRACE_ID = re.compile(r"[0-9a-f]{32}")
TRACEPARENT = re.compile(r"[0-9a-f]{2}-(?P<trace>[0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def trace_id_of(value: str) -> str:
    """The trace id of a trace id or a W3C traceparent; "" for anything else (or the all-zero invalid id)."""
    value = (value or "").strip().lower()
    match = TRACEPARENT.fullmatch(value)
    trace_id = match.group("trace") if match else value
    return trace_id if TRACE_ID.fullmatch(trace_id) and trace_id.strip("0") else ""


def trace_url(trace_id: str) -> str:
    """Where the tracing UI shows this trace; "" when TRACING_UI_URL is not set."""
    template_url = settings.TRACING_UI_URL
    return template_url.replace("{trace_id}", trace_id) if template_url and trace_id else ""


@register.simple_tag
def trace_link(value: str) -> SafeString:
    """A trace id (from a trace id or a traceparent) as code, inside a link to the tracing UI when one is set."""
    trace_id = trace_id_of(value)
    if not trace_id:
        return format_html("{}", "—")
    code = format_html('<code class="text-break" data-field="trace_id">{}</code>', trace_id)
    url = trace_url(trace_id)
    if not url:
        return code
    return format_html('<a href="{}" target="_blank" rel="noopener" data-trace-link>{}</a>', url, code)

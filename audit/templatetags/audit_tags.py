"""The audit page's words for what a chain walk found."""

from __future__ import annotations

from django import template

from audit.verify import reason_text

register = template.Library()


@register.filter
def audit_reason(reason: str) -> str:
    """Why a walk stopped, in the reader's language."""
    return reason_text(reason)

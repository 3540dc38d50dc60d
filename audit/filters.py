"""The audit log's filters, as one form shared by the page, its export and the API."""

from __future__ import annotations

from datetime import date, datetime

from django import forms
from django.utils.translation import gettext_lazy as _

from audit.models import AuditEvent
from console.forms import DateRangeFilterForm

FIELDS = ("actor", "action", "target_type", "target_id", "source", "outcome", "since", "until", "q")


class AuditFilterForm(DateRangeFilterForm):
    """Every field optional; since and until as DateRangeFilterForm reads them."""

    field_order = FIELDS

    actor = forms.CharField(label=_("Actor"), required=False, max_length=150)
    action = forms.CharField(
        label=_("Action"), required=False, max_length=100, help_text=_("Exact, or a prefix ending with a dot (auth.)")
    )
    target_type = forms.CharField(label=_("Target type"), required=False, max_length=100)
    target_id = forms.CharField(label=_("Target id"), required=False, max_length=64)
    source = forms.ChoiceField(label=_("Source"), required=False, choices=[("", _("any")), *AuditEvent.Source.choices])
    outcome = forms.ChoiceField(
        label=_("Outcome"), required=False, choices=[("", _("any")), *AuditEvent.Outcome.choices]
    )
    q = forms.CharField(
        label=_("Target name"), required=False, max_length=255, help_text=_("Part of the target's name")
    )


def filters_as_strings(filters: dict) -> dict[str, str]:
    """Cleaned filters as plain strings (times in ISO 8601), for audit event details."""
    strings = {}
    for name, value in filters.items():
        if value in (None, ""):
            continue
        strings[name] = value.isoformat() if isinstance(value, datetime | date) else str(value)
    return strings

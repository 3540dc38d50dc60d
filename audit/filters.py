"""The audit log's filters, as one form shared by the page, its export and the API."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

from django import forms
from django.utils.translation import gettext_lazy as _

from audit.models import AuditEvent

DATE_ONLY = re.compile(r"^\s*\d{4}-\d{2}-\d{2}\s*$")
INPUT_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"]
FIELDS = ("actor", "action", "target_type", "target_id", "source", "outcome", "since", "until", "q")


class AuditFilterForm(forms.Form):
    """Every field optional. `until` is inclusive; a date alone means through the end of that day.
    Naive times are in the console's time zone (UTC unless TIME_ZONE says otherwise)."""

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
    since = forms.DateTimeField(
        label=_("Since"),
        required=False,
        input_formats=INPUT_FORMATS,
        help_text=_("A date (YYYY-MM-DD) or a time (YYYY-MM-DDTHH:MM), inclusive"),
    )
    until = forms.DateTimeField(
        label=_("Until"),
        required=False,
        input_formats=INPUT_FORMATS,
        help_text=_("A date (through its end) or a time (YYYY-MM-DDTHH:MM), inclusive"),
    )
    q = forms.CharField(
        label=_("Target name"), required=False, max_length=255, help_text=_("Part of the target's name")
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name, field in self.fields.items():
            css = "form-select" if isinstance(field, forms.ChoiceField) else "form-control"
            field.widget.attrs.setdefault("class", f"{css} {css}-sm")
            if name in ("since", "until"):
                field.widget.attrs["placeholder"] = "YYYY-MM-DD"

    def clean_until(self) -> datetime | None:
        value = self.cleaned_data.get("until")
        raw = self.data.get(self.add_prefix("until")) or ""
        if value is not None and isinstance(raw, str) and DATE_ONLY.match(raw):
            value = value + timedelta(days=1) - timedelta(microseconds=1)
        return value

    def clean(self) -> dict:
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and until < since:
            self.add_error("until", _("Until must not be before since."))
        return cleaned

    def active_filters(self) -> dict:
        """The filters that narrow the list (empty ones left out); valid forms only."""
        return {name: value for name, value in self.cleaned_data.items() if value not in (None, "")}


def filters_as_strings(filters: dict) -> dict[str, str]:
    """Cleaned filters as plain strings (times in ISO 8601), for audit event details."""
    strings = {}
    for name, value in filters.items():
        if value in (None, ""):
            continue
        strings[name] = value.isoformat() if isinstance(value, datetime | date) else str(value)
    return strings

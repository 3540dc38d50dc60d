"""The inference log's filters, as one form shared by the page and the API."""

from __future__ import annotations

from datetime import datetime, timedelta
from urllib.parse import urlencode

from django import forms
from django.utils.translation import gettext_lazy as _

from audit.filters import DATE_ONLY, INPUT_FORMATS

FIELDS = ("deployment", "key_prefix", "status", "request_id", "since", "until")
# Status classes, then the codes the gateway answers with.
STATUS_CLASSES = {"ok": (0, 399), "error": (400, 599), "4xx": (400, 499), "5xx": (500, 599)}
STATUS_CHOICES = [
    ("", _("any")),
    ("ok", _("succeeded")),
    ("error", _("failed (4xx and 5xx)")),
    ("4xx", _("4xx (refused)")),
    ("5xx", _("5xx (upstream or server)")),
    *[(str(code), str(code)) for code in (200, 400, 401, 403, 404, 413, 429, 499, 500, 502, 503, 504)],
]


class InferenceLogFilterForm(forms.Form):
    """Every field optional. `until` is inclusive; a date alone means through the end of that day. Naive times are
    in the console's time zone."""

    deployment = forms.CharField(label=_("Deployment"), required=False, max_length=63)
    key_prefix = forms.CharField(
        label=_("Key prefix"), required=False, max_length=16, help_text=_("The first characters of the key")
    )
    status = forms.ChoiceField(label=_("Status"), required=False, choices=STATUS_CHOICES)
    request_id = forms.CharField(label=_("Request id"), required=False, max_length=64)
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


def filter_query(data) -> str:
    """The request's filters as a query string (no page), for the pager."""
    return urlencode([(name, value) for name in FIELDS for value in data.getlist(name) if value])

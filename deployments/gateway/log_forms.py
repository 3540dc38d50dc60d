"""The inference log's filters, as one form shared by the page and the API."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from console.forms import DateRangeFilterForm

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


class InferenceLogFilterForm(DateRangeFilterForm):
    """Every field optional; since and until as DateRangeFilterForm reads them."""

    field_order = FIELDS

    deployment = forms.CharField(label=_("Deployment"), required=False, max_length=63)
    key_prefix = forms.CharField(
        label=_("Key prefix"), required=False, max_length=16, help_text=_("The first characters of the key")
    )
    status = forms.ChoiceField(label=_("Status"), required=False, choices=STATUS_CHOICES)
    request_id = forms.CharField(label=_("Request id"), required=False, max_length=64)

"""What every HTML form shares: a service's error lands on the field it names; inputs look like the rest. And what
every list page's filter form shares: small inputs, a date range whose `until` is inclusive, the query string."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, timedelta
from urllib.parse import urlencode

from django import forms
from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _

from console import roles
from console.api.parsers import REFUSAL, has_unstorable_text
from console.errors import ApplicationError

User = get_user_model()

ROLE_CHOICES = [(name, label) for name, label in roles.ROLE_LABELS.items()]
DATE_ONLY = re.compile(r"^\s*\d{4}-\d{2}-\d{2}\s*$")
DATETIME_INPUT_FORMATS = ["%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S"]
UNTIL_BEFORE_SINCE = _("Until must not be before since.")


def apply_error(form: forms.Form, error: ApplicationError) -> None:
    """Show a service's error on the field it names (or on the form)."""
    field = error.field if error.field in form.fields else None
    form.add_error(field, error.message)


def style_input(field: forms.Field, *, small: bool = False) -> None:
    """Bootstrap's class on a text-like input or a select (a class the field already has stays)."""
    css = "form-select" if isinstance(field.widget, forms.Select) else "form-control"
    field.widget.attrs.setdefault("class", f"{css} {css}-sm" if small else css)


class StyledMixin:
    """Bootstrap's classes on every input a form renders (text, password, number, select), so each page's forms
    look alike; checkboxes and radios keep the markup templates/includes/_form.html gives them. Text no field can
    store (a NUL, an unpaired surrogate) is a field error before any field looks it up in the database."""

    small = False

    def full_clean(self) -> None:
        refused = set()
        if self.is_bound and hasattr(self.data, "lists"):
            data = self.data.copy()
            for key, values in self.data.lists():
                if has_unstorable_text(list(values)):
                    refused.add(key)
                    data.setlist(key, [])
            self.data = data
        super().full_clean()
        for key in refused & set(self.fields):
            self.add_error(key, REFUSAL)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            if isinstance(field.widget, forms.RadioSelect | forms.CheckboxInput | forms.CheckboxSelectMultiple):
                continue
            style_input(field, small=self.small)


def filter_query(data, names: Iterable[str]) -> str:
    """The request's filters (the fields named, empty ones left out, no page) as a query string, for pagers and
    export links."""
    return urlencode([(name, value) for name in names for value in data.getlist(name) if value])


class FilterForm(forms.Form):
    """A list page's filters: every field optional, small inputs (they sit in one row above the list)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for field in self.fields.values():
            style_input(field, small=True)

    def active_filters(self) -> dict:
        """The filters that narrow the list (empty ones left out); valid forms only."""
        return {name: value for name, value in self.cleaned_data.items() if value not in (None, "")}


class DateRangeFilterForm(FilterForm):
    """Filters with a `since` and an `until` time, both inclusive; a date alone as `until` means through the end of
    that day. Naive times are in the console's time zone (UTC unless TIME_ZONE says otherwise). Subclasses set
    `field_order`, as the range's fields come first otherwise."""

    since = forms.DateTimeField(
        label=_("Since"),
        required=False,
        input_formats=DATETIME_INPUT_FORMATS,
        help_text=_("A date (YYYY-MM-DD) or a time (YYYY-MM-DDTHH:MM), inclusive"),
    )
    until = forms.DateTimeField(
        label=_("Until"),
        required=False,
        input_formats=DATETIME_INPUT_FORMATS,
        help_text=_("A date (through its end) or a time (YYYY-MM-DDTHH:MM), inclusive"),
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for name in ("since", "until"):
            self.fields[name].widget.attrs["placeholder"] = "YYYY-MM-DD"

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
            self.add_error("until", UNTIL_BEFORE_SINCE)
        return cleaned

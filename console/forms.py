"""What every HTML form shares: a service's error lands on the field it names; inputs look like the rest."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model

from console import roles
from console.api.parsers import REFUSAL, has_unstorable_text
from console.errors import ApplicationError

User = get_user_model()

ROLE_CHOICES = [(name, label) for name, label in roles.ROLE_LABELS.items()]


def apply_error(form: forms.Form, error: ApplicationError) -> None:
    """Show a service's error on the field it names (or on the form)."""
    field = error.field if error.field in form.fields else None
    form.add_error(field, error.message)


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
            css = "form-select" if isinstance(field.widget, forms.Select) else "form-control"
            field.widget.attrs.setdefault("class", f"{css} {css}-sm" if self.small else css)

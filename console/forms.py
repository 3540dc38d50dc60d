"""What every HTML form shares: a service's error lands on the field it names."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model

from console import roles
from console.errors import ApplicationError

User = get_user_model()

ROLE_CHOICES = [(name, label) for name, label in roles.ROLE_LABELS.items()]


def apply_error(form: forms.Form, error: ApplicationError) -> None:
    """Show a service's error on the field it names (or on the form)."""
    field = error.field if error.field in form.fields else None
    form.add_error(field, error.message)

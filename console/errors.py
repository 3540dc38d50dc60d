"""Errors that services raise for the user to read (a form field error, an API 400)."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _

# One wording for JSON text that does not parse, in every form field, serializer field and request body.
INVALID_JSON = _("Not valid JSON: %(error)s.")


class ApplicationError(Exception):
    """A rule said no. `field` names the input at fault, when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def as_dict(self) -> dict[str, list[str]]:
        return {self.field or "non_field_errors": [self.message]}


def invalid_json(error: Exception | str) -> str:
    """The message for JSON text that does not parse: "Not valid JSON: <the parser's message>."."""
    return str(INVALID_JSON) % {"error": str(error).rstrip(".")}

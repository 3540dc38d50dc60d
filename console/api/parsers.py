"""Request body parsers that refuse text no field can hold: a NUL character (PostgreSQL text cannot store it, and
a lookup with one raises instead of finding nothing) or an unpaired surrogate (not Unicode: it cannot be
encoded, not even in the error message that echoes it). One refusal here, a 400, instead of a 500 wherever
such a value reaches a lookup, a JSON column or a response."""

from __future__ import annotations

import json
import re
from typing import Any

from django.utils.translation import gettext_lazy as _
from rest_framework import parsers, serializers
from rest_framework.exceptions import ParseError

from console.errors import invalid_json

UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
REFUSAL = _("Text may not contain NUL characters or unpaired surrogates.")


def has_unstorable_text(value: Any) -> bool:
    """Whether a string anywhere in value (keys included) holds a NUL or an unpaired surrogate."""
    if isinstance(value, str):
        return UNSTORABLE.search(value) is not None
    if isinstance(value, dict):
        return any(has_unstorable_text(key) or has_unstorable_text(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(has_unstorable_text(item) for item in value)
    return False


def _refuse_unstorable(data: Any) -> None:
    if has_unstorable_text(data):
        raise ParseError(REFUSAL)


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except ParseError as error:  # DRF's "JSON parse error - ...": said as every other invalid JSON
            raise ParseError(invalid_json(str(error.detail).removeprefix("JSON parse error - "))) from None
        _refuse_unstorable(data)
        return data


class JSONTextField(serializers.JSONField):
    """A JSON field whose text (form-encoded input) that does not parse is refused with the one wording."""

    def to_internal_value(self, data):
        if self.binary or getattr(data, "is_json_string", False):
            try:
                json.loads(data.decode() if isinstance(data, bytes) else data)
            except (TypeError, ValueError) as error:
                raise serializers.ValidationError(invalid_json(error)) from None
        return super().to_internal_value(data)


class FormParser(parsers.FormParser):
    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        _refuse_unstorable(dict(data.lists()))
        return data


class MultiPartParser(parsers.MultiPartParser):
    """Only the text fields are checked: uploaded files are bytes and may hold anything."""

    def parse(self, stream, media_type=None, parser_context=None):
        parsed = super().parse(stream, media_type, parser_context)
        _refuse_unstorable(dict(parsed.data.lists()))
        return parsed

"""Hostile input for the fuzz tests: each value is something a careless client or an attacker sends, named for
the report. The console must answer every one with a re-rendered form or a 4xx, never a 500."""

from __future__ import annotations

from typing import Any

# What an HTML form field can receive: text (a browser sends strings; a script sends anything).
TEXT: dict[str, str] = {
    "empty": "",
    "long": "x" * 100_000,
    "nul": "nul\x00byte",
    "only-nul": "\x00",
    "unicode": "\u202eé中文\U0001f600\ufeff",
    "control": "\r\n\t\x07\x1b[31m",
    "negative": "-1",
    "huge-number": "99999999999999999999999999",
    "below-bigint": "-9223372036854775809",
    "float-garbage": "1e309",
    "nan": "NaN",
    "json-garbage": '{"unterminated": [1, ',
    "traversal": "../../../../etc/passwd",
    "absolute-path": "/etc/shadow",
    "html": '<script>alert("x")</script>',
    "sql": "' OR 1=1; --",
    "url": "http://169.254.169.254/latest/meta-data/",
}

# What a JSON field can receive: every text above, and the types a scalar field does not expect.
JSON: dict[str, Any] = {
    **TEXT,
    "lone-surrogate": "\ud800",
    "null": None,
    "true": True,
    "minus-one": -1,
    "int64-overflow": 2**64,
    "float": 0.5,
    "list": ["a", "b"],
    "object": {"a": {"b": []}},
    "empty-list": [],
}

# A list where one value is expected: a form posts the field twice.
FORM_LIST = ["a", "b"]


def as_query_value(value: Any) -> str | list[str] | None:
    """A JSON value as a query parameter: lists repeat the parameter, None leaves it out."""
    if value is None or (isinstance(value, str) and not value.isascii() and not _encodable(value)):
        return None  # nothing to send (a lone surrogate cannot go into a URL)
    if isinstance(value, list):
        return [str(item) for item in value] or [""]
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True

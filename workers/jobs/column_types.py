"""Column types of JSON-like records, named as Arrow (and so the `datasets` library) names them when it reads
the same file: `string`, `int64`, `double`, `bool`, `null`, `list<item: T>`, `struct<a: T, b: U>`.

A type is a name (str), ("list", item type) or ("struct", {field: type}). Types of successive records merge:
null gives way to anything, int64 to double, lists and structs merge item by item; two types Arrow could not
hold in one column merge to `mixed`. Field names are schema, not content, but a dict keyed by data (one key per
user, say) would put data in the schema: a struct with more than MAX_FIELDS fields, or nested deeper than
MAX_DEPTH, is only `object`, and names are cut to MAX_NAME characters.
"""

from __future__ import annotations

from typing import Any

MAX_FIELDS = 64
MAX_COLUMNS = 1000
MAX_DEPTH = 8
MAX_NAME = 100

Type = Any  # str | tuple[str, Type] | tuple[str, dict[str, Type]]

_SCALARS = {str: "string", bool: "bool", int: "int64", float: "double", type(None): "null"}


def type_of(value: Any, depth: int = 0) -> Type:
    """The Arrow type of one JSON value."""
    scalar = _SCALARS.get(type(value))
    if scalar is not None:
        return scalar
    if depth >= MAX_DEPTH:
        return "object"
    if isinstance(value, list):
        item: Type = "null"
        for element in value:
            item = merge(item, type_of(element, depth + 1))
        return ("list", item)
    if isinstance(value, dict):
        if len(value) > MAX_FIELDS:
            return "object"
        return ("struct", {str(name)[:MAX_NAME]: type_of(field, depth + 1) for name, field in value.items()})
    return "mixed"


def merge(a: Type, b: Type) -> Type:
    """One type that holds values of both."""
    if a == b or b == "null":
        return a
    if a == "null":
        return b
    if a in ("int64", "double") and b in ("int64", "double"):
        return "double"
    if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0]:
        if a[0] == "list":
            return ("list", merge(a[1], b[1]))
        fields = dict(a[1])
        for name, kind in b[1].items():
            fields[name] = merge(fields.get(name, "null"), kind)
        return ("struct", fields) if len(fields) <= MAX_FIELDS else "object"
    return "mixed"


def render(kind: Type) -> str:
    """The type as Arrow prints it: list<item: struct<role: string, content: string>>."""
    if isinstance(kind, str):
        return kind
    if kind[0] == "list":
        return f"list<item: {render(kind[1])}>"
    return "struct<" + ", ".join(f"{name}: {render(field)}" for name, field in kind[1].items()) + ">"


class ColumnTypes:
    """The columns of a stream of records (dicts) and their merged types, in first-seen order (the first
    MAX_COLUMNS names)."""

    def __init__(self) -> None:
        self._columns: dict[str, Type] = {}

    def add(self, record: dict[str, Any]) -> None:
        for name, value in record.items():
            name = str(name)[:MAX_NAME]
            current = self._columns.get(name)
            if current is None and len(self._columns) >= MAX_COLUMNS:
                continue
            found = type_of(value)
            self._columns[name] = found if current is None else merge(current, found)

    def as_dict(self) -> dict[str, str]:
        return {name: render(kind) for name, kind in self._columns.items()}

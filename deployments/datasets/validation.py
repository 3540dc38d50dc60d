"""Reading a dataset file in one streaming pass: its sha256, format, record shape, row count, columns, and the first
problems by line and field. Nothing a reader of a problem sees holds a value from a row: messages name the line, the
field and what is wrong, never what the field contains (engineers read them; the rows are not theirs to read)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.utils.translation import gettext_lazy as _

READ_BYTES = 1 << 20
MAX_RECORD_BYTES = 64 << 20  # one JSONL line, CSV field or JSON array element
MAX_ERRORS = 20
SCHEMA_SAMPLE = 1000  # records whose keys and types make the columns
CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})

# Problems are stored as codes and shown in the reader's language; `message` keeps the English sentence.
MESSAGES = {
    "not_json": _("not valid JSON (column %(column)s)"),
    "not_utf8": _("not UTF-8 text"),
    "too_long": _("longer than 64 MiB"),
    "not_object": _("the record is not a JSON object"),
    "not_array": _("a JSON dataset is one array of records"),
    "unknown_shape": _("no `messages`, `prompt` and `completion`, or `text` field"),
    "missing": _("`%(field)s` is missing"),
    "not_string": _("`%(field)s` is not a string"),
    "empty": _("`%(field)s` is empty"),
    "not_list": _("`%(field)s` is not a list of messages"),
    "bad_role": _("`%(field)s` is not one of system, user, assistant, tool"),
    "no_assistant": _("`%(field)s` has no assistant turn"),
    "csv": _("not valid CSV (%(reason)s)"),
    "csv_width": _("has %(found)s fields, the header has %(expected)s"),
    "no_header": _("the CSV file has no header row"),
    "no_rows": _("the file has no rows"),
    "not_parquet": _("not a Parquet file (no PAR1 marker)"),
}


@dataclass
class Problem:
    line: int
    code: str
    field: str = ""
    params: dict = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict:
        """What is stored and served: where and what, in English; describe() renders it in the reader's language."""
        with _english():
            message = str(MESSAGES[self.code]) % {"field": self.field, **self.params}
        return {"line": self.line, "field": self.field, "code": self.code, "params": self.params, "message": message}


def describe(problem: dict) -> str:
    """A stored problem as a sentence in the active language: "line 7: `messages` has no assistant turn"."""
    template = MESSAGES.get(problem.get("code", ""))
    text = str(template) % {"field": problem.get("field", ""), **problem.get("params", {})} if template else ""
    text = text or problem.get("message", "")
    if not problem.get("line"):
        return text
    return str(_("line %(line)s: %(problem)s")) % {"line": problem["line"], "problem": text}


class _english:
    def __enter__(self):
        from django.utils import translation

        self._previous = translation.get_language()
        translation.activate("en")

    def __exit__(self, *exc):
        from django.utils import translation

        translation.activate(self._previous) if self._previous else translation.deactivate()


@dataclass
class Report:
    sha256: str = ""
    size: int = 0
    shape: str = ""
    row_count: int | None = 0
    columns: dict = dataclasses.field(default_factory=dict)
    errors: list[dict] = dataclasses.field(default_factory=list)
    error_count: int = 0


class HashingReader(io.RawIOBase):
    """A raw binary stream that feeds every byte it reads into a sha256."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.digest, self.size = raw, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.digest.update(data)
        self.size += len(data)
        return len(data)


# -- the three text formats, each as (line, record or Problem) ---------------------------------------------------


def _jsonl(stream: io.BufferedReader) -> Iterator[tuple[int, object]]:
    line = 0
    while True:
        raw = stream.readline(MAX_RECORD_BYTES + 1)
        if not raw:
            return
        line += 1
        if len(raw) > MAX_RECORD_BYTES and not raw.endswith(b"\n"):
            while (rest := stream.readline(READ_BYTES)) and not rest.endswith(b"\n"):
                pass
            yield line, Problem(line, "too_long")
            continue
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            yield line, Problem(line, "not_utf8")
            continue
        try:
            yield line, json.loads(text)
        except json.JSONDecodeError as error:  # error.msg names the grammar, never the text
            yield line, Problem(line, "not_json", params={"column": error.colno})


def _csv(stream: io.BufferedReader) -> Iterator[tuple[int, object]]:
    csv.field_size_limit(MAX_RECORD_BYTES)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader, None)
        if not header or not any(name.strip() for name in header):
            yield 1, Problem(1, "no_header")
            return
        header = [name.strip() for name in header]
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) != len(header):
                yield line, Problem(line, "csv_width", params={"found": len(row), "expected": len(header)})
                continue
            record = dict(zip(header, row, strict=True))
            if "messages" in record:
                try:
                    record["messages"] = json.loads(record["messages"])
                except json.JSONDecodeError as error:
                    yield line, Problem(line, "not_json", "messages", params={"column": error.colno})
                    continue
            yield line, record
    except UnicodeDecodeError:
        yield reader.line_num + 1, Problem(reader.line_num + 1, "not_utf8")
    except csv.Error as error:  # the reason names the grammar ("new-line character seen in unquoted field")
        reason = str(error).split(":", 1)[0][:120]
        yield reader.line_num, Problem(reader.line_num, "csv", params={"reason": reason})
    finally:
        text.detach()


def _json_array(stream: io.BufferedReader) -> Iterator[tuple[int, object]]:
    """The elements of a top-level array, decoded one at a time from a sliding window (never the whole file)."""
    decoder = json.JSONDecoder()
    text = io.TextIOWrapper(stream, encoding="utf-8-sig")
    buffer, position, line, eof = "", 0, 1, False

    def fill() -> bool:
        nonlocal buffer, position, eof
        chunk = text.read(READ_BYTES)
        eof = not chunk
        buffer, position = buffer[position:] + chunk, 0
        return bool(chunk)

    def skip_space() -> str:
        nonlocal position, line
        while True:
            while position < len(buffer) and buffer[position] in " \t\r\n":
                line += buffer[position] == "\n"
                position += 1
            if position < len(buffer) or not fill():
                return buffer[position] if position < len(buffer) else ""

    try:
        if skip_space() != "[":
            yield line, Problem(line, "not_array")
            return
        position += 1
        if skip_space() == "]":
            return
        while True:
            skip_space()
            while True:
                try:
                    record, end = decoder.raw_decode(buffer, position)
                    break
                except json.JSONDecodeError as error:
                    if eof or len(buffer) - position > MAX_RECORD_BYTES or not fill():
                        where = line + buffer.count("\n", position, error.pos)
                        yield where, Problem(where, "not_json", params={"column": error.colno})
                        return
            start = line
            line += buffer.count("\n", position, end)
            position = end
            yield start, record
            mark = skip_space()
            if mark == "]":
                return
            if mark != ",":
                yield line, Problem(line, "not_json", params={"column": 0})
                return
            position += 1
    except UnicodeDecodeError:
        yield line, Problem(line, "not_utf8")
    finally:
        text.detach()


READERS = {"jsonl": _jsonl, "csv": _csv, "json": _json_array}


# -- record shapes ---------------------------------------------------------------------------------------------


def detect_shape(record: dict) -> str:
    if "messages" in record:
        return "chat"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    return ""


def _string(record: dict, name: str) -> list[tuple[str, str]]:
    if name not in record:
        return [(name, "missing")]
    if not isinstance(record[name], str):
        return [(name, "not_string")]
    return [] if record[name].strip() else [(name, "empty")]


def check_record(record: dict, shape: str) -> list[tuple[str, str]]:
    """(field, code) for each problem of one record of this shape."""
    if shape == "prompt_completion":
        return _string(record, "prompt") + _string(record, "completion")
    if shape == "text":
        return _string(record, "text")
    messages = record.get("messages")
    if "messages" not in record:
        return [("messages", "missing")]
    if not isinstance(messages, list) or not messages:
        return [("messages", "not_list")]
    problems = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            problems.append((where, "not_object"))
            continue
        if message.get("role") not in CHAT_ROLES:
            problems.append((f"{where}.role", "bad_role"))
        content = message.get("content")
        if not isinstance(content, str | list) and not (message.get("role") == "assistant" and "tool_calls" in message):
            problems.append((f"{where}.content", "not_string"))
    if not any(isinstance(m, dict) and m.get("role") == "assistant" for m in messages):
        problems.append(("messages", "no_assistant"))
    return problems


def _type_name(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "bool", int: "int", float: "float"}.get(
        type(value), "null"
    )


# -- the pass ------------------------------------------------------------------------------------------------------


def inspect(path: Path, fmt: str, *, max_errors: int = MAX_ERRORS) -> Report:
    """Hash and check a dataset file in one streaming pass."""
    with open(path, "rb") as raw:
        hashing = HashingReader(raw)
        stream = io.BufferedReader(hashing, READ_BYTES)
        report = _parquet(stream) if fmt == "parquet" else _records(READERS[fmt](stream), max_errors)
        while stream.read(READ_BYTES):  # the rest, for the digest (a reader may stop at a fatal problem)
            pass
    report.sha256, report.size = hashing.digest.hexdigest(), hashing.size
    return report


def _records(records: Iterator[tuple[int, object]], max_errors: int) -> Report:
    report = Report()
    problems: list[Problem] = []

    def add(problem: Problem) -> None:
        report.error_count += 1
        if len(problems) < max_errors:
            problems.append(problem)

    for line, record in records:
        if isinstance(record, Problem):
            add(record)
            continue
        if not isinstance(record, dict):
            add(Problem(line, "not_object"))
            continue
        report.row_count += 1
        report.shape = report.shape or detect_shape(record)
        if not report.shape:
            add(Problem(line, "unknown_shape"))
            continue
        for name, code in check_record(record, report.shape):
            add(Problem(line, code, name))
        if report.row_count <= SCHEMA_SAMPLE:
            for key, value in record.items():
                report.columns.setdefault(str(key)[:100], _type_name(value))
    if not report.row_count and not report.error_count:
        add(Problem(0, "no_rows"))
    report.errors = [problem.as_dict() for problem in problems]
    return report


def _parquet(stream: io.BufferedReader) -> Report:
    """Parquet is checked for its markers only: the console has no Arrow reader; the ML environment's stats job
    counts its rows and reads its columns."""
    head = stream.read(4)
    tail = b""
    while chunk := stream.read(READ_BYTES):
        tail = (tail + chunk)[-4:]
    report = Report(row_count=None)
    if head != b"PAR1" or tail != b"PAR1":
        report.error_count = 1
        report.errors = [Problem(0, "not_parquet").as_dict()]
    return report


def read_rows(path: Path, fmt: str, *, limit: int) -> list[dict]:
    """The first `limit` records, for those who may read them (view_data). Parquet: none (no Arrow reader here)."""
    if fmt not in READERS:
        return []
    rows = []
    with open(path, "rb") as raw:
        for _line, record in READERS[fmt](io.BufferedReader(raw, READ_BYTES)):
            if isinstance(record, dict):
                rows.append(record)
            if len(rows) >= limit:
                break
    return rows

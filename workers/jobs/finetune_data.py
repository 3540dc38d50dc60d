"""Training records from a JSONL file, read as a stream: which shape they have, and where they are wrong.

Shapes (TRL's): chat `{"messages": [{"role", "content"}, ...]}` with at least one assistant turn;
prompt/completion `{"prompt": str, "completion": str}`; plain text `{"text": str}`. Other keys are ignored.
Every record must have the shape of the first. Messages say where (line, field) and never quote a record:
an engineer may train on data they may not read, and errors reach them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.jobs.protocol import BadInput

SHAPES = ("chat", "prompt_completion", "text")
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class DatasetScan:
    shape: str
    rows: int
    bytes: int


def record_shape(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "chat"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    return None


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def check_record(record: Any, shape: str) -> str | None:
    """What is wrong with one record of the given shape, without quoting it; None when it is fine."""
    if shape == "chat":
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            return "field messages must be a non-empty list of {role, content}"
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                return f"messages[{index}].role must be one of {', '.join(ROLES)}"
            if not isinstance(message.get("content"), str):
                return f"messages[{index}].content must be a string"
        if not any(message["role"] == "assistant" and message["content"].strip() for message in messages):
            return "chat record has no assistant turn (nothing to learn from)"
        return None
    if shape == "prompt_completion":
        for name in ("prompt", "completion"):
            if not _nonempty_str(record[name]):
                return f"field {name} must be a non-empty string"
        return None
    return None if _nonempty_str(record["text"]) else "field text must be a non-empty string"


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    yield number, line
        except UnicodeDecodeError as exc:
            raise BadInput(f"{path.name} is not UTF-8 text (after line {number}).", field="dataset") from exc


def scan_dataset(path: str | Path) -> DatasetScan:
    """Read the whole file once; BadInput naming the first bad line (and how many more) when any is wrong."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"The dataset file {path} does not exist.", field="dataset")
    shape, rows, problems = None, 0, []
    number = 0
    for number, line in _lines(path):
        try:
            record = json.loads(line)
        except ValueError as exc:
            problems.append((number, f"not valid JSON ({exc.msg}, column {exc.colno})"))
            continue
        found = record_shape(record)
        if found is None:
            problems.append((number, "a record needs messages, prompt and completion, or text"))
            continue
        shape = shape or found
        if found != shape:
            problems.append((number, f"a {found} record in a {shape} dataset (every record needs the same shape)"))
            continue
        problem = check_record(record, shape)
        if problem:
            problems.append((number, problem))
            continue
        rows += 1
    if problems:
        first_line, first = problems[0]
        more = f" ({len(problems) - 1} more lines have errors)" if len(problems) > 1 else ""
        raise BadInput(
            f"Line {first_line} of {path.name}: {first}.{more}",
            cause="bad_record",
            line=first_line,
            field="dataset",
            next_step="Fix the line in the dataset and add it as a new version.",
        )
    if rows == 0:
        raise BadInput(f"{path.name} has no records.", cause="empty_dataset", field="dataset")
    return DatasetScan(shape=shape, rows=rows, bytes=path.stat().st_size)


def normalized(record: dict[str, Any], shape: str) -> dict[str, Any]:
    """Only the keys TRL reads for the shape, so stray columns never reach the trainer."""
    if shape == "chat":
        return {"messages": [{"role": m["role"], "content": m["content"]} for m in record["messages"]]}
    if shape == "prompt_completion":
        return {"prompt": record["prompt"], "completion": record["completion"]}
    return {"text": record["text"]}


def iter_records(path: str, shape: str, with_lines: bool = False, **_fingerprint: Any) -> Iterator[Any]:
    """The records of a scanned file in file order, or (line number, record) pairs; the extra keywords only make
    a datasets cache key."""
    for number, line in _lines(Path(path)):
        record = normalized(json.loads(line), shape)
        yield (number, record) if with_lines else record

"""A dataset file read as a stream of (line, record), never whole: JSONL line by line, a JSON array element by
element from a sliding window, CSV row by row, Parquet a record batch at a time (pyarrow reads row groups from
the file; nothing is memory-mapped, since a mapping counts against an address-space cap as much as a copy).

Memory is bounded by the longest record (MAX_RECORD_BYTES) and, for Parquet, by one row group. A malformed
record is BadInput naming the line (the row for Parquet) and what is wrong with it, never what it holds.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from workers.jobs.protocol import BadInput

FORMATS = ("jsonl", "json", "csv", "parquet")
READ_BYTES = 1 << 20
MAX_RECORD_BYTES = 64 << 20  # one JSONL line, CSV field or JSON array element, as the console's upload check
PARQUET_BATCH_ROWS = 256
SHAPE_COLUMNS = {"chat": ("messages",), "prompt_completion": ("prompt", "completion"), "text": ("text",)}
NEXT_STEP = "Fix the line in the dataset and add it as a new version."


def bad_record(path: Path, line: int, problem: str, *, unit: str = "Line", field: str = "dataset") -> BadInput:
    """BadInput for one record: where and what, in words that never quote the record."""
    return BadInput(
        f"{unit} {line} of {path.name}: {problem}.",
        cause="bad_record",
        line=line,
        field=field,
        next_step=NEXT_STEP,
    )


class CountingReader(io.RawIOBase):
    """A raw binary stream that counts the bytes read through it, for progress."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.count = raw, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(len(buffer))
        buffer[: len(data)] = data
        self.count += len(data)
        return len(data)


class RecordFile:
    """One dataset file: `records()` yields (line, record) in file order; `bytes_read` says how far it got;
    `schema` is the file's own column types where the format has them (Parquet), else None."""

    def __init__(self, path: str | Path, fmt: str) -> None:
        self.path, self.format = Path(path), fmt
        self.size = os.stat(self.path).st_size
        self.schema: dict[str, str] | None = None
        self.unit = "Row" if fmt == "parquet" else "Line"
        self._counter: CountingReader | None = None
        self._parquet_bytes = 0

    @property
    def bytes_read(self) -> int:
        return self._counter.count if self._counter is not None else self._parquet_bytes

    def records(self) -> Iterator[tuple[int, Any]]:
        if self.format == "parquet":
            yield from self._parquet()
            return
        reader = {"jsonl": self._jsonl, "json": self._json_array, "csv": self._csv}[self.format]
        with open(self.path, "rb") as raw:
            self._counter = CountingReader(raw)
            yield from reader(io.BufferedReader(self._counter, READ_BYTES))

    def _bad(self, line: int, problem: str, field: str = "dataset") -> BadInput:
        return bad_record(self.path, line, problem, unit=self.unit, field=field)

    def _jsonl(self, stream: io.BufferedReader) -> Iterator[tuple[int, Any]]:
        line = 0
        while raw := stream.readline(MAX_RECORD_BYTES + 1):
            line += 1
            if len(raw) > MAX_RECORD_BYTES and not raw.endswith(b"\n"):
                raise self._bad(line, "longer than 64 MiB")
            if not raw.strip():
                continue
            yield line, self._decode_json(raw, line)

    def _decode_json(self, raw: bytes, line: int) -> Any:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._bad(line, "not UTF-8 text") from None
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:  # exc.msg names the grammar rule, never the text
            raise self._bad(line, f"not valid JSON ({exc.msg}, column {exc.colno})") from None

    def _csv(self, stream: io.BufferedReader) -> Iterator[tuple[int, Any]]:
        csv.field_size_limit(MAX_RECORD_BYTES)
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        reader = csv.reader(text)
        try:
            header = next(reader, None)
            if not header or not any(name.strip() for name in header):
                raise self._bad(1, "the CSV file has no header row")
            header = [name.strip() for name in header]
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise self._bad(reader.line_num, f"{len(row)} fields, the header has {len(header)}")
                record: dict[str, Any] = dict(zip(header, row, strict=True))
                if "messages" in record:  # a chat CSV holds each conversation as a JSON cell, as on upload
                    try:
                        record["messages"] = json.loads(record["messages"])
                    except json.JSONDecodeError as exc:
                        problem = f"not valid JSON ({exc.msg}, column {exc.colno})"
                        raise self._bad(reader.line_num, problem, field="messages") from None
                yield reader.line_num, record
        except UnicodeDecodeError:
            raise self._bad(reader.line_num + 1, "not UTF-8 text") from None
        except csv.Error as exc:  # the reason names the grammar ("new-line character seen in unquoted field")
            raise self._bad(reader.line_num, f"not valid CSV ({str(exc).split(':', 1)[0][:120]})") from None

    def _json_array(self, stream: io.BufferedReader) -> Iterator[tuple[int, Any]]:
        """The elements of one top-level array, decoded one at a time from a sliding window."""
        window = _JsonWindow(io.TextIOWrapper(stream, encoding="utf-8-sig"))
        try:
            if window.skip_space() != "[":
                raise self._bad(window.line, "a JSON dataset is one array of records")
            window.position += 1
            if window.skip_space() == "]":
                return  # an empty array: no records
            while True:
                window.skip_space()
                start = window.line
                record = window.decode(lambda line, problem: self._bad(line, problem))
                yield start, record
                mark = window.skip_space()
                if mark == "]":
                    window.position += 1
                    if window.skip_space():
                        raise self._bad(window.line, "not valid JSON (more after the closing ])")
                    return
                if mark != ",":
                    raise self._bad(window.line, "not valid JSON (expected ',' or ']' after a record)")
                window.position += 1
        except UnicodeDecodeError:
            raise self._bad(window.line, "not UTF-8 text") from None

    def _parquet(self) -> Iterator[tuple[int, Any]]:
        # mimalloc, Arrow's default allocator here, reserves 1 GiB of address space at its first allocation:
        # the system allocator lets the program run under a small RLIMIT_AS. Read before pyarrow loads.
        os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            parquet = pq.ParquetFile(self.path, memory_map=False)
        except (pa.ArrowException, OSError):
            raise BadInput(
                f"{self.path.name} is not a readable Parquet file.", cause="bad_file", field="dataset"
            ) from None
        self.schema = {field.name: str(field.type) for field in parquet.schema_arrow}
        names = set(self.schema)
        wanted = next((cols for cols in SHAPE_COLUMNS.values() if set(cols) <= names), None)
        if wanted is None:
            raise self._bad(1, "no messages, prompt and completion, or text column")
        row = 0
        for group in range(parquet.num_row_groups):
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=wanted):
                for record in batch.to_pylist():
                    row += 1
                    yield row, record
            # Progress by row groups: the compressed bytes of those read so far.
            meta = parquet.metadata.row_group(group)
            self._parquet_bytes += sum(meta.column(index).total_compressed_size for index in range(meta.num_columns))


class _JsonWindow:
    """A sliding window over a text stream for decoding one JSON value at a time; counts lines."""

    def __init__(self, text: io.TextIOWrapper) -> None:
        self.text, self.buffer, self.position, self.line, self.eof = text, "", 0, 1, False
        self.decoder = json.JSONDecoder()

    def fill(self) -> bool:
        chunk = self.text.read(READ_BYTES)
        self.eof = not chunk
        self.buffer, self.position = self.buffer[self.position :] + chunk, 0
        return bool(chunk)

    def skip_space(self) -> str:
        """The next non-space character (not consumed), or "" at the end."""
        while True:
            while self.position < len(self.buffer) and self.buffer[self.position] in " \t\r\n":
                self.line += self.buffer[self.position] == "\n"
                self.position += 1
            if self.position < len(self.buffer) or not self.fill():
                return self.buffer[self.position] if self.position < len(self.buffer) else ""

    def decode(self, bad) -> Any:
        """The value at the position; reads more while it is cut off by the window's end."""
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.position)
                break
            except json.JSONDecodeError as exc:
                # Where, before fill() shifts the buffer under exc.pos.
                where = self.line + self.buffer.count("\n", self.position, exc.pos)
                if self.eof or len(self.buffer) - self.position > MAX_RECORD_BYTES or not self.fill():
                    raise bad(where, f"not valid JSON ({exc.msg})") from None
        self.line += self.buffer.count("\n", self.position, end)
        self.position = end
        return value

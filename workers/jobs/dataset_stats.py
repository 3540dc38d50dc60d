"""Statistics of a dataset file, for engineers who may train on it but not read it: rows, columns and their
types, record shape, token lengths with a model's tokenizer, and the train/eval split a fine-tune would make.

    python -m workers.jobs.dataset_stats --spec FILE

    {
      "dataset": "/data/cache/3/v2-ab12.jsonl",   the file
      "format": "jsonl" | "json" | "csv" | "parquet",
      "tokenizer": "/models/org--name/<commit>" | null,   a model directory with tokenizer files; null: no lengths
      "eval_fraction": 0.1,                        0 to below 0.5, as a fine-tune's eval_fraction
      "seed": 42,                                  the split's seed, as a fine-tune's hyperparameters.seed
      "bins": null | 20 | [0, 256, 512, 1024],     histogram: a number of equal-width bins, or edges
      "cache_dir": null | "/data/cache"            accepted; unused (the file is streamed, nothing is cached)
    }

The result event: {"rows", "columns": {name: Arrow type}, "shape", "token_lengths": {"tokenizer", "min", "max",
"mean", "p50", "p90", "p99", "bins", "counts"} | null, "split": {"train", "eval", "seed", "eval_fraction"},
"bytes", "seconds"}; token_lengths.py says how lengths, percentiles and bins are counted.

The file is read as a stream (dataset_files.py): memory stays bounded by a batch of records, whatever the file's
size; under an address-space cap (RLIMIT_AS) the program needs what its imports take (~150 MiB with a tokenizer,
transformers without torch) plus a batch, and reads a file three times the cap (the test shows it). No event and no
error holds a row's content: errors name the line and the field. Events, stopping and exit codes:
workers/jobs/protocol.py (a stop saves nothing: statistics are computed again from the start).
"""

from __future__ import annotations

import itertools
import math
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.jobs.column_types import ColumnTypes
from workers.jobs.dataset_files import FORMATS, RecordFile, bad_record
from workers.jobs.finetune import TOKENIZER_FILES
from workers.jobs.finetune_data import check_record, normalized, record_shape
from workers.jobs.protocol import BadInput, Events, JobFailed, Stopped, StopRequest, run_program
from workers.jobs.token_lengths import LengthTally, count_tokens, load_tokenizer, tokenizer_name

FIELDS = ("dataset", "format", "tokenizer", "eval_fraction", "seed", "bins", "cache_dir")
MAX_BINS = 1000
BATCH_ROWS = 256
BATCH_CHARS = 1 << 20  # token ids come back as Python lists: a batch's text bounds that memory
PROGRESS_SECONDS = 1.0


@dataclass(frozen=True)
class StatsSpec:
    dataset: str
    format: str
    tokenizer: str | None = None
    eval_fraction: float = 0.1
    seed: int = 42
    bins: int | list[int] | None = None
    cache_dir: str | None = None


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_bins(bins: Any) -> int | list[int] | None:
    if bins is None or (_whole(bins) and 0 < bins <= MAX_BINS):
        return bins
    if (
        isinstance(bins, list)
        and 0 < len(bins) <= MAX_BINS + 1
        and all(_whole(edge) for edge in bins)
        and all(a < b for a, b in itertools.pairwise(bins))
    ):
        return bins
    raise BadInput(
        f"bins must be a number of bins from 1 to {MAX_BINS}, or a list of increasing whole numbers.", field="bins"
    )


def parse_spec(raw: dict[str, Any]) -> StatsSpec:
    """The checked spec; BadInput naming the first wrong field. Touches the disk, imports nothing heavy."""
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise BadInput(f"Unknown spec field {unknown[0]}.", field=unknown[0])
    dataset, fmt = raw.get("dataset"), raw.get("format")
    if not isinstance(dataset, str) or not dataset:
        raise BadInput("dataset is required: a dataset file.", field="dataset")
    if fmt not in FORMATS:
        raise BadInput(f"format must be one of {', '.join(FORMATS)}.", field="format")
    if not Path(dataset).is_file():
        raise BadInput(f"The dataset file {dataset} does not exist.", cause="no_dataset", field="dataset")
    tokenizer = raw.get("tokenizer")
    if tokenizer is not None:
        if not isinstance(tokenizer, str) or not tokenizer:
            raise BadInput("tokenizer must be a model directory, or null.", field="tokenizer")
        if not any((Path(tokenizer) / name).is_file() for name in TOKENIZER_FILES):
            raise BadInput(f"{tokenizer} holds no tokenizer files.", cause="no_tokenizer", field="tokenizer")
    fraction = raw.get("eval_fraction", 0.1)
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction < 0.5:
        raise BadInput("eval_fraction must be a number from 0 to below 0.5.", field="eval_fraction")
    seed = raw.get("seed", 42)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise BadInput("seed must be a whole number from 0 to 2**32 - 1.", field="seed")
    cache_dir = raw.get("cache_dir")
    if cache_dir is not None and not isinstance(cache_dir, str):
        raise BadInput("cache_dir must be a directory, or null.", field="cache_dir")
    return StatsSpec(dataset, fmt, tokenizer, float(fraction), seed, _check_bins(raw.get("bins")), cache_dir)


def split_sizes(rows: int, eval_fraction: float, seed: int) -> dict[str, Any]:
    """The sizes of the fine-tune's split (datasets' train_test_split: the eval share rounded up)."""
    held_out = math.ceil(eval_fraction * rows) if eval_fraction else 0
    return {"train": rows - held_out, "eval": held_out, "seed": seed, "eval_fraction": eval_fraction}


class StatsPass:
    """One pass over the records: checks each, merges the column types, counts tokens a batch at a time."""

    def __init__(self, spec: StatsSpec, file: RecordFile, events: Events, stop: StopRequest) -> None:
        self.spec, self.file, self.events, self.stop = spec, file, events, stop
        self.shape: str | None = None
        self.rows = self.line = 0
        self.columns = ColumnTypes()
        self.tally = LengthTally()
        self.tokenizer = None
        self.batch: list[tuple[int, dict[str, Any]]] = []
        self.batch_chars = 0
        self.reported = time.monotonic()

    def run(self) -> None:
        for line, record in self.file.records():
            self.line = line
            self.add(record)
            # Every BATCH_ROWS rows, with or without a tokenizer: stop requests and progress are read there.
            if self.rows % BATCH_ROWS == 0 or self.batch_chars >= BATCH_CHARS:
                self.flush()
        self.flush()

    def _bad(self, problem: str) -> BadInput:
        return bad_record(self.file.path, self.line, problem, unit=self.file.unit)

    def add(self, record: Any) -> None:
        if not isinstance(record, dict):
            raise self._bad("the record is not a JSON object")
        found = record_shape(record)
        if found is None:
            raise self._bad("a record needs messages, prompt and completion, or text")
        if self.shape is None:
            self.shape = found
            self.tokenizer = self._tokenizer(found)
        if found != self.shape:
            raise self._bad(f"a {found} record in a {self.shape} dataset (every record needs the same shape)")
        problem = check_record(record, self.shape)
        if problem:
            raise self._bad(problem)
        if self.file.schema is None:
            self.columns.add(record)
        self.rows += 1
        if self.tokenizer is not None:
            record = normalized(record, self.shape)
            self.batch.append((self.line, record))
            self.batch_chars += _chars(record)

    def _tokenizer(self, shape: str):
        if self.spec.tokenizer is None:
            return None
        self.events.log(f"Loading the tokenizer of {Path(self.spec.tokenizer).name} for {shape} records.")
        return load_tokenizer(self.spec.tokenizer, shape)

    def flush(self) -> None:
        if self.batch:
            self.tally.add(self._count(self.batch))
            self.batch, self.batch_chars = [], 0
        if self.stop.requested:
            self.events.log(f"Stopped on request after {self.rows} rows; nothing is saved.", level="warning")
            raise Stopped()
        if time.monotonic() - self.reported >= PROGRESS_SECONDS:
            self.reported = time.monotonic()
            self.events.progress(self.rows, None, bytes=self.file.bytes_read, bytes_total=self.file.size)

    def _count(self, batch: list[tuple[int, dict[str, Any]]]) -> list[int]:
        try:
            return count_tokens(self.tokenizer, self.shape, [record for _, record in batch])
        except Exception:
            # A chat template may refuse a conversation (roles out of order): find which, by line.
            for line, record in batch:
                try:
                    count_tokens(self.tokenizer, self.shape, [record])
                except Exception as exc:
                    problem = f"the tokenizer refuses it ({type(exc).__name__})"
                    raise bad_record(self.file.path, line, problem, unit=self.file.unit, field="tokenizer") from None
            raise

    def result(self, seconds: float) -> dict[str, Any]:
        lengths = None
        if self.tokenizer is not None:
            lengths = self.tally.summary(self.spec.bins, tokenizer_name(self.spec.tokenizer))
        return {
            "rows": self.rows,
            "columns": self.file.schema if self.file.schema is not None else self.columns.as_dict(),
            "shape": self.shape,
            "token_lengths": lengths,
            "split": split_sizes(self.rows, self.spec.eval_fraction, self.spec.seed),
            "bytes": self.file.size,
            "seconds": round(seconds, 2),
        }


def _chars(record: dict[str, Any]) -> int:
    if "messages" in record:
        return sum(len(message["content"]) for message in record["messages"])
    return sum(len(value) for value in record.values())


def run(raw: dict[str, Any], events: Events, stop: StopRequest) -> None:
    started = time.monotonic()
    spec = parse_spec(raw)
    file = RecordFile(spec.dataset, spec.format)
    events.log(f"Reading {file.path.name}: {spec.format}, {file.size} bytes.")
    events.progress(0, None, bytes=0, bytes_total=file.size)
    stats = StatsPass(spec, file, events, stop)
    try:
        stats.run()
    except (BadInput, JobFailed, Stopped):
        raise
    except MemoryError:
        where = "while loading the tokenizer" if stats.rows == 0 else f"at {file.unit.lower()} {stats.line}"
        raise JobFailed(
            f"Out of memory {where}.",
            cause="out_of_memory",
            next_step="Give the job more memory; a single record may be too large.",
        ) from None
    except Exception as exc:
        # Frames only: an exception's message may quote the record it failed on.
        traceback.print_tb(exc.__traceback__, file=sys.stderr)
        raise JobFailed(
            f"Reading {file.path.name} failed at {file.unit.lower()} {stats.line} ({type(exc).__name__}).",
            cause="stats_failed",
            next_step="Read the job log for where it failed.",
        ) from None
    if stats.rows == 0:
        raise BadInput(f"{file.path.name} has no records.", cause="empty_dataset", field="dataset")
    result = stats.result(time.monotonic() - started)
    events.progress(stats.rows, stats.rows, bytes=file.size, bytes_total=file.size)
    events.log(f"{stats.rows} rows in {result['seconds']} s.")
    events.result(**result)


def main(argv: list[str] | None = None) -> int:
    return run_program(run, argv, prog="python -m workers.jobs.dataset_stats")


if __name__ == "__main__":
    sys.exit(main())

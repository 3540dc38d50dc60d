"""The evaluate job's data, read and checked before any model loads: the perplexity text, the task's examples,
the model directories. Standard library only. Messages name the file, the line and the field, never a record's
content: an engineer may evaluate on data they may not read, and errors reach them.
"""

from __future__ import annotations

import array
import hashlib
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.jobs.evaluate_spec import EvaluateSpec, PerplexitySpec, SplitSpec, TaskSpec
from workers.jobs.finetune_data import iter_records, scan_dataset
from workers.jobs.finetune_spec import TOKENIZER_FILES
from workers.jobs.protocol import BadInput

# Characters read per token asked for: English runs 3-5 characters a token; this leaves room for any tokenizer
# without reading a huge file whole for a few thousand tokens.
CHARS_PER_TOKEN = 32
ROW_SEPARATOR = "\n\n"  # between JSONL rows, as transformers' perplexity guide joins a data set's rows


@dataclass(frozen=True)
class Example:
    prompt: str
    expected: str | int  # exact_match: the text; multiple_choice: the index of the right choice
    choices: tuple[str, ...] = ()


def check_models(spec: EvaluateSpec) -> None:
    """Each model path is a model directory with a tokenizer, and the perplexity window fits each model."""
    for index, model in enumerate(spec.models):
        where = f"models[{index}].path"
        path = Path(model.path)
        if not (path / "config.json").is_file():
            raise BadInput(f"{model.id}: {path} is not a model directory (no config.json).", field=where)
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise BadInput(
                f"{model.id}: {path} has no tokenizer files.",
                cause="no_tokenizer",
                field=where,
                next_step="Evaluate an artifact that ships its tokenizer.",
            )
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except ValueError as exc:
            raise BadInput(f"{model.id}: {path}/config.json is not valid JSON.", field=where) from exc
        positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
        if spec.perplexity and isinstance(positions, int) and spec.perplexity.context_length > positions:
            raise BadInput(
                f"perplexity.context_length ({spec.perplexity.context_length}) is longer than {model.id} takes "
                f"({positions} positions).",
                field="perplexity.context_length",
            )


def _row_text(record: dict[str, Any], shape: str) -> str:
    if shape == "chat":
        return "\n".join(message["content"] for message in record["messages"])
    if shape == "prompt_completion":
        return record["prompt"] + record["completion"]
    return record["text"]


def _held_out_records(path: Path, shape: str, split: SplitSpec, field: str):
    """The records a fine-tune with this split holds out, in the order it evaluates them (heldout_split: the
    fine-tune's own loading and split), and the file's row count."""
    from workers.jobs.heldout_split import load_records, train_eval_split

    with tempfile.TemporaryDirectory(prefix="evaluate-split-") as cache:
        data = load_records(str(path), shape, cache)
        try:
            _train, held_out = train_eval_split(data, split.eval_fraction, split.seed)
        except ValueError as exc:
            raise BadInput(
                f"{path.name} has {len(data)} rows: too few for an eval split of {split.eval_fraction:g} "
                "with rows left to train on.",
                cause="empty_dataset",
                field=field + ".split",
                next_step="Evaluate on the whole version, or choose a version with more rows.",
            ) from exc
        yield from held_out


def read_perplexity_text(spec: PerplexitySpec) -> tuple[str, str, int | None]:
    """The text to score (enough characters for max_tokens), the data file's name and the number of rows it
    holds (None for plain text); a .txt file is plain text, any other file JSONL rows (text,
    prompt/completion or chat) joined by a blank line: all of them in file order, or with `split` only the
    rows a fine-tune holds out, in its order."""
    path = spec.data_path()
    field = "perplexity.path"
    if not path.is_file():
        raise BadInput(f"The perplexity data file {path} does not exist.", field=field)
    budget = spec.max_tokens * CHARS_PER_TOKEN
    rows: int | None = None
    if path.suffix.lower() == ".txt":
        if spec.split is not None:
            raise BadInput(
                f"{path.name} is plain text: it has no rows to split. Leave the split out, or evaluate on a "
                "dataset version.",
                field="perplexity.split",
            )
        try:
            with open(path, encoding="utf-8", errors="strict") as handle:
                text = handle.read(budget)
        except UnicodeDecodeError as exc:
            raise BadInput(f"{path.name} is not UTF-8 text.", field=field) from exc
    else:
        try:
            scan = scan_dataset(path)
        except BadInput as exc:
            raise BadInput(exc.message, cause=exc.cause, next_step=exc.next_step, line=exc.line, field=field) from exc
        records = (
            iter_records(str(path), scan.shape)
            if spec.split is None
            else _held_out_records(path, scan.shape, spec.split, "perplexity")
        )
        parts, size = [], 0
        for record in records:
            parts.append(_row_text(record, scan.shape))
            size += len(parts[-1]) + len(ROW_SEPARATOR)
            if size >= budget:
                break
        records.close()  # a split's generator removes its Arrow cache
        text, rows = ROW_SEPARATOR.join(parts), len(parts)
    if not text.strip():
        raise BadInput(f"{path.name} holds no text to score.", cause="empty_dataset", field=field)
    return text, path.name, rows


def _problem(record: Any, task: TaskSpec) -> tuple[str, str] | None:
    """(spec field, what is wrong) for one example, without quoting it; None when it is fine."""
    if not isinstance(record, dict):
        return "task.path", "an example must be a JSON object"
    prompt, expected = task.prompt_field, task.expected_field
    if prompt not in record:
        return "task.prompt_field", f"has no field {prompt}"
    if not isinstance(record[prompt], str) or not record[prompt].strip():
        return "task.prompt_field", f"field {prompt} must be a non-empty string"
    if expected not in record:
        return "task.expected_field", f"has no field {expected}"
    value = record[expected]
    if task.kind == "exact_match":
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            return "task.expected_field", f"field {expected} must be a string (or a whole number)"
        return None
    choices = task.choices_field
    if choices not in record:
        return "task.choices_field", f"has no field {choices}"
    options = record[choices]
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) and o for o in options):
        return "task.choices_field", f"field {choices} must be a list of at least 2 non-empty strings"
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < len(options):
            return "task.expected_field", f"field {expected} is index {value}, outside the {len(options)} choices"
        return None
    if isinstance(value, str):
        return None if value in options else ("task.expected_field", f"field {expected} is none of the choices")
    return "task.expected_field", f"field {expected} must be the index or the text of the right choice"


def read_examples(task: TaskSpec) -> list[Example]:
    """The task's examples (the first `limit`); BadInput naming the first bad line and the spec field to fix."""
    path = Path(task.path)
    if not path.is_file():
        raise BadInput(f"The task file {path} does not exist.", field="task.path")
    examples: list[Example] = []
    problems: list[tuple[int, str, str]] = []
    with open(path, encoding="utf-8", errors="strict") as handle:
        number = 0
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                # With a split, the limit counts held-out examples: every line is read first.
                if task.split is None and task.limit is not None and len(examples) + len(problems) >= task.limit:
                    break
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    problems.append((number, "task.path", f"not valid JSON ({exc.msg}, column {exc.colno})"))
                    continue
                problem = _problem(record, task)
                if problem:
                    problems.append((number, *problem))
                    continue
                expected = record[task.expected_field]
                if task.kind == "multiple_choice":
                    options = tuple(record[task.choices_field])
                    index = expected if isinstance(expected, int) else options.index(expected)
                    examples.append(Example(record[task.prompt_field], index, options))
                else:
                    examples.append(Example(record[task.prompt_field], str(expected)))
        except UnicodeDecodeError as exc:
            raise BadInput(f"{path.name} is not UTF-8 text (after line {number}).", field="task.path") from exc
    if problems:
        line, field, what = problems[0]
        more = f" ({len(problems) - 1} more lines have errors)" if len(problems) > 1 else ""
        raise BadInput(
            f"Line {line} of {path.name}: {what}.{more}",
            cause="bad_record",
            line=line,
            field=field,
            next_step="Fix the examples, or name the fields the file uses in the task's field settings.",
        )
    if not examples:
        raise BadInput(f"{path.name} has no examples.", cause="empty_dataset", field="task.path")
    if task.split is not None:
        examples = _held_out_examples(examples, task.split, path.name)[: task.limit]
    return examples


def _held_out_examples(examples: list[Example], split: SplitSpec, name: str) -> list[Example]:
    from workers.jobs.heldout_split import eval_indices

    try:
        return [examples[i] for i in eval_indices(len(examples), split.eval_fraction, split.seed)]
    except ValueError as exc:
        raise BadInput(
            f"{name} has {len(examples)} examples: too few for an eval split of {split.eval_fraction:g} with rows "
            "left to train on.",
            cause="empty_dataset",
            field="task.split",
            next_step="Evaluate on the whole version, or choose a version with more rows.",
        ) from exc


def token_ids_sha256(ids: list[int]) -> str:
    """sha256 of the token ids as little-endian unsigned 32-bit integers: the identity of the scored tokens."""
    packed = array.array("I", ids)
    if sys.byteorder == "big":
        packed.byteswap()
    return hashlib.sha256(packed.tobytes()).hexdigest()

"""An evaluate job's spec: fields, defaults and checks, standard library only, so the console can check a form
with the same rules the program applies. A wrong field is `BadInput(field=...)`, the field named as a path
("models[1].id", "perplexity.stride", "task.kind").

    {
      "models": [{"id": "artifact-12", "path": "/models/..."}, ...],   1 to 8, ids unique; compared on the same data
      "perplexity": null | {
        "path": null | "/data/heldout.jsonl",     null: the sample the project ships (DEFAULT_PERPLEXITY_TEXT);
                                                  a .txt file is read as plain text, anything else as JSONL rows
                                                  (text, prompt/completion or chat messages)
        "context_length": 512, "stride": 256,     the sliding window: each window scores only tokens not scored
                                                  before (transformers' perplexity guide); stride <= context_length
        "max_tokens": 32768,                      at most this many tokens of the data are evaluated
        "split": null | {"eval_fraction": 0.1, "seed": 42}
                                                  only the rows a fine-tune with this eval_fraction and
                                                  hyperparameters.seed holds out (JSONL data only)
      },
      "task": null | {
        "path": "/data/task.jsonl",
        "kind": "multiple_choice" | "exact_match",
        "prompt_field": "prompt", "expected_field": "expected",
        "choices_field": "choices",               multiple_choice: a list of strings; expected is the index or the
                                                  text of the right one; the choice with the highest total
                                                  log-likelihood given the prompt is the model's answer
        "limit": null | N,                        the first N examples only
        "max_new_tokens": 32,                     exact_match: greedy generation, compared after whitespace strip
        "split": null | {...}                     as perplexity's: the held-out examples only (limit counts those)
      },
      "device": "cpu" | "cuda",
      "dtype": "auto" | "bf16" | "fp16" | "fp32", auto: the checkpoint's own dtype on a GPU, fp32 on CPU
      "batch_size": 1..64                         windows (perplexity) or examples (task) per forward pass
    }

At least one of perplexity and task. The spec does not look at the files (the console may check it on another
machine than the one that runs it); the program does, before it loads a model.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from workers.jobs.protocol import BadInput

DEFAULT_PERPLEXITY_TEXT = Path(__file__).resolve().parent / "data" / "eval_sample.txt"
TASK_KINDS = ("multiple_choice", "exact_match")
DEVICES = ("cpu", "cuda")
DTYPES = ("auto", "bf16", "fp16", "fp32")
MAX_MODELS = 8
MAX_ID_LENGTH = 100
MAX_CONTEXT = 131_072
MAX_TOKENS = 10_000_000
MAX_NEW_TOKENS = 4096
MAX_BATCH = 64
# A name a console shows and a metric keys on: letters, digits and . _ - : / @ + (no spaces, no quotes).
MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")

TOP_LEVEL = ("models", "perplexity", "task", "device", "dtype", "batch_size")
PERPLEXITY_FIELDS = ("path", "context_length", "stride", "max_tokens", "split")
TASK_FIELDS = ("path", "kind", "prompt_field", "expected_field", "choices_field", "limit", "max_new_tokens", "split")
SPLIT_FIELDS = ("eval_fraction", "seed")
MAX_EVAL_FRACTION = 0.5  # finetune_spec's bound: an eval share of half or more leaves too little to train on
MAX_SEED = 2**32 - 1  # finetune_spec's hyperparameters.seed bound


@dataclass(frozen=True)
class SplitSpec:
    """The eval rows of a fine-tune with this eval_fraction and hyperparameters.seed (workers/jobs/heldout_split)."""

    eval_fraction: float
    seed: int


@dataclass(frozen=True)
class ModelRef:
    id: str
    path: str


@dataclass(frozen=True)
class PerplexitySpec:
    path: str | None = None  # None: DEFAULT_PERPLEXITY_TEXT
    context_length: int = 512
    stride: int = 256
    max_tokens: int = 32768
    split: SplitSpec | None = None

    def data_path(self) -> Path:
        return Path(self.path) if self.path else DEFAULT_PERPLEXITY_TEXT


@dataclass(frozen=True)
class TaskSpec:
    path: str
    kind: str
    prompt_field: str = "prompt"
    expected_field: str = "expected"
    choices_field: str = "choices"
    limit: int | None = None
    max_new_tokens: int = 32
    split: SplitSpec | None = None


@dataclass(frozen=True)
class EvaluateSpec:
    models: tuple[ModelRef, ...]
    perplexity: PerplexitySpec | None = None
    task: TaskSpec | None = None
    device: str = "cpu"
    dtype: str = "auto"
    batch_size: int = 8

    def to_dict(self) -> dict[str, Any]:
        return {
            "models": [asdict(model) for model in self.models],
            "perplexity": asdict(self.perplexity) if self.perplexity else None,
            "task": asdict(self.task) if self.task else None,
            "device": self.device,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(raw: dict, name: str, default: int | None, low: int, high: int, prefix: str, *, nullable: bool = False):
    value = raw.get(name, default)
    if value is None and nullable:
        return None
    if value is None:
        value = default
    if not _is_int(value) or not low <= value <= high:
        raise BadInput(f"{prefix}{name} must be a whole number from {low} to {high}.", field=prefix + name)
    return value


def _str(raw: dict, name: str, default: str | None, prefix: str, what: str) -> str:
    value = raw.get(name, default)
    if value is None:
        value = default
    if not isinstance(value, str) or not value.strip():
        raise BadInput(f"{prefix}{name} must be {what}.", field=prefix + name)
    return value


def _choice(raw: dict, name: str, default: str, allowed: tuple[str, ...], prefix: str = "") -> str:
    value = raw.get(name, default)
    if value is None:
        value = default
    if value not in allowed:
        raise BadInput(f"{prefix}{name} must be one of {', '.join(allowed)}.", field=prefix + name)
    return value


def _object(raw: Any, name: str, fields: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise BadInput(f"{name} must be an object (or null to leave it out).", field=name)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise BadInput(f"Unknown field {name}.{unknown[0]}.", field=f"{name}.{unknown[0]}")
    return raw


def _split(raw: Any, prefix: str) -> SplitSpec | None:
    if raw is None:
        return None
    raw = _object(raw, prefix + "split", SPLIT_FIELDS)
    where = prefix + "split."
    fraction = raw.get("eval_fraction")
    if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 < fraction < MAX_EVAL_FRACTION:
        raise BadInput(
            f"{where}eval_fraction must be a number above 0 and below {MAX_EVAL_FRACTION}.",
            field=where + "eval_fraction",
        )
    seed = _int(raw, "seed", None, 0, MAX_SEED, where)
    return SplitSpec(eval_fraction=float(fraction), seed=seed)


def _models(raw: Any) -> tuple[ModelRef, ...]:
    if not isinstance(raw, list) or not raw:
        raise BadInput("models is required: a list of 1 to 8 {id, path} objects.", field="models")
    if len(raw) > MAX_MODELS:
        raise BadInput(f"At most {MAX_MODELS} models are compared in one run, not {len(raw)}.", field="models")
    models, seen = [], set()
    for index, item in enumerate(raw):
        prefix = f"models[{index}]."
        if not isinstance(item, dict):
            raise BadInput(f"models[{index}] must be an object with id and path.", field=f"models[{index}]")
        unknown = sorted(set(item) - {"id", "path"})
        if unknown:
            raise BadInput(f"Unknown field {prefix}{unknown[0]}.", field=prefix + unknown[0])
        model_id = item.get("id")
        if not isinstance(model_id, str) or len(model_id) > MAX_ID_LENGTH or not MODEL_ID.fullmatch(model_id):
            raise BadInput(
                f"{prefix}id must be a name of up to {MAX_ID_LENGTH} letters, digits and . _ : / @ + -.",
                field=prefix + "id",
            )
        if model_id in seen:
            raise BadInput(f"{prefix}id {model_id} is used twice; each model needs its own id.", field=prefix + "id")
        seen.add(model_id)
        models.append(ModelRef(id=model_id, path=_str(item, "path", None, prefix, "a model directory")))
    return tuple(models)


def _perplexity(raw: Any) -> PerplexitySpec | None:
    if raw is None:
        return None
    raw = _object(raw, "perplexity", PERPLEXITY_FIELDS)
    prefix = "perplexity."
    path = raw.get("path")
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise BadInput("perplexity.path must be a data file, or null for the shipped sample.", field=prefix + "path")
    context = _int(raw, "context_length", 512, 8, MAX_CONTEXT, prefix)
    stride = _int(raw, "stride", min(256, context), 1, MAX_CONTEXT, prefix)
    if stride > context:
        raise BadInput(
            f"perplexity.stride ({stride}) must not be larger than context_length ({context}): tokens between "
            "windows would never be scored.",
            field=prefix + "stride",
        )
    max_tokens = _int(raw, "max_tokens", 32768, 2, MAX_TOKENS, prefix)
    split = _split(raw.get("split"), prefix)
    return PerplexitySpec(path=path, context_length=context, stride=stride, max_tokens=max_tokens, split=split)


def _task(raw: Any) -> TaskSpec | None:
    if raw is None:
        return None
    raw = _object(raw, "task", TASK_FIELDS)
    prefix = "task."
    path = _str(raw, "path", None, prefix, "a JSONL file of examples")
    kind = raw.get("kind")
    if kind not in TASK_KINDS:
        raise BadInput(f"task.kind must be one of {', '.join(TASK_KINDS)}.", field=prefix + "kind")
    names = {
        name: _str(raw, name, default, prefix, "the name of a field of the examples")
        for name, default in (("prompt_field", "prompt"), ("expected_field", "expected"), ("choices_field", "choices"))
    }
    if names["prompt_field"] == names["expected_field"]:
        raise BadInput("task.expected_field must differ from task.prompt_field.", field=prefix + "expected_field")
    if kind == "multiple_choice" and names["choices_field"] in (names["prompt_field"], names["expected_field"]):
        raise BadInput(
            "task.choices_field must differ from the prompt and expected fields.", field=prefix + "choices_field"
        )
    limit = _int(raw, "limit", None, 1, MAX_TOKENS, prefix, nullable=True)
    max_new = _int(raw, "max_new_tokens", 32, 1, MAX_NEW_TOKENS, prefix)
    split = _split(raw.get("split"), prefix)
    return TaskSpec(path=path, kind=kind, **names, limit=limit, max_new_tokens=max_new, split=split)


def parse_spec(raw: dict[str, Any]) -> EvaluateSpec:
    """The checked spec with defaults filled in; BadInput naming the first wrong field."""
    if not isinstance(raw, dict):
        raise BadInput("The spec must be a JSON object.", field="spec")
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise BadInput(f"Unknown spec field {unknown[0]}.", field=unknown[0])
    models = _models(raw.get("models"))
    perplexity = _perplexity(raw.get("perplexity"))
    task = _task(raw.get("task"))
    if perplexity is None and task is None:
        raise BadInput(
            "Nothing to evaluate: give perplexity, task or both.",
            field="perplexity",
            next_step='Add "perplexity": {} to use the shipped text sample.',
        )
    return EvaluateSpec(
        models=models,
        perplexity=perplexity,
        task=task,
        device=_choice(raw, "device", "cpu", DEVICES),
        dtype=_choice(raw, "dtype", "auto", DTYPES),
        batch_size=_int(raw, "batch_size", 8, 1, MAX_BATCH, ""),
    )

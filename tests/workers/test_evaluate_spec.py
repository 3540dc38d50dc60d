"""The evaluate job's spec (workers/jobs/evaluate_spec.py): defaults, and a wrong field named in the error, in the
console's environment (standard library only)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.serve_process import ROOT
from workers.jobs.evaluate_spec import DEFAULT_PERPLEXITY_TEXT, parse_spec
from workers.jobs.protocol import BadInput

MODELS = [{"id": "artifact-1", "path": "/models/a"}, {"id": "artifact-2", "path": "/models/b"}]


def test_defaults_fill_in_and_the_spec_round_trips():
    spec = parse_spec({"models": MODELS, "perplexity": {}})
    assert spec.perplexity.context_length == 512 and spec.perplexity.stride == 256
    assert spec.perplexity.max_tokens == 32768 and spec.perplexity.data_path() == DEFAULT_PERPLEXITY_TEXT
    assert spec.task is None and (spec.device, spec.dtype, spec.batch_size) == ("cpu", "auto", 8)
    assert parse_spec(spec.to_dict()) == spec
    task = parse_spec({"models": MODELS[:1], "task": {"path": "/d/t.jsonl", "kind": "exact_match"}}).task
    assert (task.prompt_field, task.expected_field, task.limit, task.max_new_tokens) == ("prompt", "expected", None, 32)
    # A fine-tune's eval split travels with the data settings.
    held_out = parse_spec({"models": MODELS, "perplexity": {"split": {"eval_fraction": 0.2, "seed": 7}}})
    assert held_out.to_dict()["perplexity"]["split"] == {"eval_fraction": 0.2, "seed": 7}
    assert parse_spec(held_out.to_dict()) == held_out and spec.perplexity.split is None
    # A short context without a stride scores whole windows rather than failing on the default stride.
    assert parse_spec({"models": MODELS, "perplexity": {"context_length": 64}}).perplexity.stride == 64


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"models": []}, "models", "1 to 8"),
        ({"models": [{"id": f"m{i}", "path": "/m"} for i in range(9)]}, "models", "At most 8"),
        ({"models": [MODELS[0], {"id": "artifact-1", "path": "/models/c"}]}, "models[1].id", "used twice"),
        ({"models": [{"id": "has space", "path": "/m"}]}, "models[0].id", "letters, digits"),
        ({"models": [{"id": "a", "path": ""}]}, "models[0].path", "model directory"),
        ({"perplexity": None}, "perplexity", "Nothing to evaluate"),
        ({"perplexity": {"context_length": 128, "stride": 256}}, "perplexity.stride", "not be larger"),
        ({"perplexity": {"context_length": 4}}, "perplexity.context_length", "from 8 to"),
        ({"perplexity": {"max_tokens": 1}}, "perplexity.max_tokens", "from 2 to"),
        ({"perplexity": {"windows": 3}}, "perplexity.windows", "Unknown field"),
        ({"task": {"path": "/t.jsonl", "kind": "rouge"}}, "task.kind", "multiple_choice, exact_match"),
        ({"task": {"kind": "exact_match"}}, "task.path", "JSONL file"),
        ({"task": {"path": "/t.jsonl", "kind": "exact_match", "limit": 0}}, "task.limit", "from 1"),
        ({"task": {"path": "/t.jsonl", "kind": "exact_match", "expected_field": "prompt"}}, "task.expected_field", ""),
        ({"batch_size": 65}, "batch_size", "from 1 to 64"),
        ({"batch_size": True}, "batch_size", "whole number"),
        ({"device": "tpu"}, "device", "cpu, cuda"),
        ({"dtype": "int4"}, "dtype", "auto, bf16"),
        ({"seed": 1}, "seed", "Unknown spec field"),
        ({"perplexity": {"split": {"eval_fraction": 0.5, "seed": 1}}}, "perplexity.split.eval_fraction", "below 0.5"),
        ({"perplexity": {"split": {"eval_fraction": 0, "seed": 1}}}, "perplexity.split.eval_fraction", "above 0"),
        ({"perplexity": {"split": {"eval_fraction": 0.1}}}, "perplexity.split.seed", "whole number"),
        ({"perplexity": {"split": {"eval_fraction": 0.1, "seed": 1, "x": 1}}}, "perplexity.split.x", "Unknown"),
        (
            {"task": {"path": "/t", "kind": "exact_match", "split": {"eval_fraction": True, "seed": 1}}},
            "task.split.eval_fraction",
            "a number",
        ),
    ],
)
def test_a_wrong_field_is_named(change, field, words):
    raw = {"models": MODELS, "perplexity": {}} | change
    with pytest.raises(BadInput) as caught:
        parse_spec(raw)
    assert caught.value.field == field and words in caught.value.message


def test_the_spec_imports_only_the_standard_library():
    code = (
        "import sys; before = set(sys.modules); import workers.jobs.evaluate_spec; "
        "print(sorted(m.split('.')[0] for m in set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert set(json.loads(out.stdout.replace("'", '"'))) - set(sys.stdlib_module_names) == {"workers"}

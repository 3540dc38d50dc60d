"""Which config.json architectures the planner sizes, and the defaults transformers gives what config.json omits.

Both are data: supported_architectures.json is the planner's claim (each entry is checked against transformers'
own counts and caches by tests/deployments/sizing/test_architectures.py), architecture_defaults.json holds each
config class's signature defaults as tests/fixtures/model-configs/generate_param_counts.py extracted them.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@cache
def supported_architectures() -> frozenset[str]:
    """config.json `model_type` values the planner sizes exactly."""
    data = json.loads((HERE / "supported_architectures.json").read_text(encoding="utf-8"))
    return frozenset(data["model_types"])


@cache
def _defaults() -> dict[str, dict[str, Any]]:
    return json.loads((HERE / "architecture_defaults.json").read_text(encoding="utf-8"))["defaults"]


def architecture_defaults(model_type: str) -> dict[str, Any]:
    """The config class's defaults for the sizes config.json may leave out (a copy; empty when unknown)."""
    return dict(_defaults().get(model_type, {}))

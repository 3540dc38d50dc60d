"""A benchmark's starting workload for one deployment, derived from its spec: prompts a quarter of what the server
takes (so long-prompt behaviour shows without a refusal for length), 128 output tokens, the usual sweep of
concurrency 1, 4, 16, 64 cut at what the server admits, and the dialect that reads the backend best. Pure: the
spec's values in, a workload (the shape deployments.benchmarks.workload checks) out."""

from __future__ import annotations

from typing import Any

LEVELS = (1, 4, 16, 64)
CPU_LEVELS = (1, 2, 4)  # the development server on CPU: a few streams already saturate it
PROMPT_MAX = 1024  # longer prompts measure prefill more than the batching a first benchmark is about
PROMPT_MIN = 16
OUTPUT_TOKENS = 128
CPU_OUTPUT_TOKENS = 32
DEFAULT_INPUT_LIMIT = 1024  # what a spec without its own limit is taken to allow
DURATION_S, CPU_DURATION_S = 30, 10
WARMUP_S = 5
# TGI's native stream returns the server's own timing headers (queue time, time per token) beside the tokens,
# the cross-check of the client's figures; vLLM's completion route takes the prompt as built, to the exact token
# count (a chat template would add its own few), and ignore_eos makes every answer its full length.
DIALECTS = {"tgi": "tgi-generate-stream", "vllm": "openai-completion"}


def _input_limit(spec: Any, output: int) -> int:
    limit = getattr(spec, "max_input_tokens", None)
    if not limit and getattr(spec, "max_model_len", None):
        limit = spec.max_model_len - output
    total = getattr(spec, "max_total_tokens", None)
    if total:
        limit = min(limit or total, total - output)
    return limit or DEFAULT_INPUT_LIMIT


def preset_for(deployment: Any) -> dict[str, Any]:
    """The preset workload for `deployment` (its current spec; defaults where there is none)."""
    spec = getattr(deployment, "spec", None)
    backend = getattr(spec, "backend", "") or "tgi"
    cpu = getattr(spec, "device", "gpu") == "cpu"
    output = CPU_OUTPUT_TOKENS if cpu else OUTPUT_TOKENS
    total = getattr(spec, "max_total_tokens", None) or getattr(spec, "max_model_len", None)
    if total:
        output = max(1, min(output, total // 2))  # room left for the prompt on a server with a short context
    prompt = max(PROMPT_MIN, min(PROMPT_MAX, _input_limit(spec, output) // 4))
    cap = getattr(spec, "max_concurrent_requests", None) or max(LEVELS)
    levels = sorted({min(level, cap) for level in (CPU_LEVELS if cpu else LEVELS)})
    workload: dict[str, Any] = {
        "dialect": DIALECTS.get(backend, "openai-chat"),
        "prompt_tokens": prompt,
        "output_tokens": output,
        "sweep": "concurrency",
        "levels": levels,
        "warmup_s": WARMUP_S,
        "duration_s": CPU_DURATION_S if cpu else DURATION_S,
        "seed": 0,
    }
    if backend == "vllm":
        workload["sampling"] = {"temperature": 0, "ignore_eos": True}
    return workload

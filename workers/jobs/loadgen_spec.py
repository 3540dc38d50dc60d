"""The load generator's spec (the shape is in loadgen.py's docstring), checked before any request is sent:
every wrong field is a BadInput that names it. Standard library only, so a handler can check a spec with the
same rules before it starts the program."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from workers.jobs.loadgen_workload import LengthDistribution
from workers.jobs.protocol import BadInput

FIELDS = {
    "base_url", "api_key", "api_key_file", "dialect", "model", "workload", "steps", "warmup_s", "warmup_requests",
    "duration_s", "requests", "sampling", "seed", "request_timeout_s", "tls_verify", "raw_path", "metrics_urls",
    "kv_budgets", "gpu_indexes", "nvml_module",
}  # fmt: skip
STEP_FIELDS = {
    "concurrency",
    "rate",
    "max_concurrency",
    "label",
    "warmup_s",
    "warmup_requests",
    "duration_s",
    "requests",
}
SAMPLING_FIELDS = {"temperature", "top_p", "top_k", "seed", "ignore_eos", "continuous_usage"}
DIALECTS = ("openai-chat", "openai-completion", "tgi-generate-stream")
MAX_STEPS = 64
MAX_CONCURRENCY = 10_000
MAX_RATE = 10_000.0
MAX_SECONDS = 86_400.0
MAX_REQUESTS = 10_000_000
MAX_METRICS_URLS = 16  # a deployment's servers (8 replicas) with room
MAX_GPU_INDEX = 255
MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True)
class Sampling:
    temperature: float | None = None  # None or 0: greedy
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    ignore_eos: bool = False  # vLLM's extension: exactly max_tokens tokens; sent only when true
    continuous_usage: bool = False  # vLLM's stream_options.continuous_usage_stats: a token count in every chunk


@dataclass(frozen=True)
class Step:
    label: str
    concurrency: int = 0  # closed loop: this many callers, each sending its next request when the last ends
    rate: float = 0.0  # open loop: Poisson arrivals, requests per second
    max_concurrency: int = 0  # open loop: at most this many in flight (0: no cap); waiting shows as schedule lag
    warmup_s: float = 0.0
    warmup_requests: int = 0
    duration_s: float = 0.0
    requests: int = 0

    def load(self) -> dict[str, Any]:
        return {"concurrency": self.concurrency} if self.concurrency else {"rate": self.rate}


@dataclass(frozen=True)
class LoadSpec:
    base_url: str
    dialect: str
    prompt_tokens: LengthDistribution
    output_tokens: LengthDistribution
    steps: list[Step]
    api_key: str = field(default="", repr=False)
    model: str = ""
    tokenizer: str | None = None
    sampling: Sampling = Sampling()
    seed: int = 0
    request_timeout_s: float = 300.0
    tls_verify: bool = True
    raw_path: str | None = None
    metrics_urls: tuple[str, ...] = ()  # the servers' own /metrics, sampled during each step
    kv_budgets: dict[str, int] = field(default_factory=dict)  # TGI: a metrics URL's KV capacity in tokens
    gpu_indexes: tuple[int, ...] = ()  # the servers' GPUs on this host, their utilization read through NVML
    nvml_module: str = "pynvml"  # tests name a stand-in (tests.support.fake_nvml), as workers/nvml.load_nvml


def _number(raw: dict, key: str, where: str, *, low: float, high: float, whole: bool = False, default=0) -> Any:
    value = raw.get(key)
    if value is None:
        return default
    kind = "a whole number" if whole else "a number"
    ok_type = isinstance(value, int) if whole else isinstance(value, int | float)
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or not low <= value <= high:
        raise BadInput(f"{where}{key} must be {kind} from {low:g} to {high:g}.", field=f"{where}{key}")
    return value


def _unknown(raw: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(raw) - allowed)
    if extra:
        raise BadInput(f"{where or 'the spec'}: unknown field(s) {', '.join(extra)}.", field=f"{where}{extra[0]}")


def _amounts(raw: dict, where: str, defaults: dict) -> dict[str, Any]:
    """warmup_s / warmup_requests and duration_s / requests: a step's own pair replaces the spec's."""
    merged = {}
    for pair in (("warmup_s", "warmup_requests"), ("duration_s", "requests")):
        own = any(raw.get(key) is not None for key in pair)
        source, prefix = (raw, where) if own else (defaults, "")
        merged[pair[0]] = _number(source, pair[0], prefix, low=0, high=MAX_SECONDS)
        merged[pair[1]] = _number(source, pair[1], prefix, low=0, high=MAX_REQUESTS, whole=True)
    if bool(merged["duration_s"]) == bool(merged["requests"]):
        message = f"{prefix or 'the spec'}: give either duration_s or requests (one, above zero)"
        raise BadInput(f"{message} for {where.rstrip('.')}.", field=f"{prefix}duration_s")
    return merged


def _step(raw: Any, index: int, defaults: dict) -> Step:
    where = f"steps[{index}]."
    if not isinstance(raw, dict):
        raise BadInput(f"steps[{index}] must be an object with concurrency or rate.", field=f"steps[{index}]")
    _unknown(raw, STEP_FIELDS, where)
    concurrency = _number(raw, "concurrency", where, low=1, high=MAX_CONCURRENCY, whole=True, default=0)
    rate = _number(raw, "rate", where, low=1e-6, high=MAX_RATE, default=0.0)
    if bool(concurrency) == bool(rate):
        raise BadInput(f"{where}: give either concurrency or rate.", field=f"steps[{index}]")
    cap = _number(raw, "max_concurrency", where, low=1, high=MAX_CONCURRENCY, whole=True, default=0)
    if cap and concurrency:
        raise BadInput(f"{where}max_concurrency goes with rate only.", field=f"{where}max_concurrency")
    label = raw.get("label") or (f"concurrency {concurrency}" if concurrency else f"{rate:g} req/s")
    if not isinstance(label, str) or len(label) > 100:
        raise BadInput(f"{where}label must be text of at most 100 characters.", field=f"{where}label")
    return Step(
        label=label, concurrency=concurrency, rate=float(rate), max_concurrency=cap, **_amounts(raw, where, defaults)
    )


def _sampling(raw: Any) -> Sampling:
    if raw is None:
        return Sampling()
    if not isinstance(raw, dict):
        raise BadInput("sampling must be an object.", field="sampling")
    _unknown(raw, SAMPLING_FIELDS, "sampling.")
    top_p = raw.get("top_p")
    if top_p is not None:
        _number(raw, "top_p", "sampling.", low=1e-6, high=1.0)
    for flag in ("ignore_eos", "continuous_usage"):
        if not isinstance(raw.get(flag, False), bool):
            raise BadInput(f"sampling.{flag} must be true or false.", field=f"sampling.{flag}")
    return Sampling(
        temperature=_number(raw, "temperature", "sampling.", low=0, high=10, default=None),
        top_p=top_p,
        top_k=_number(raw, "top_k", "sampling.", low=1, high=1_000_000, whole=True, default=None),
        seed=_number(raw, "seed", "sampling.", low=0, high=2**63 - 1, whole=True, default=None),
        ignore_eos=raw.get("ignore_eos", False),
        continuous_usage=raw.get("continuous_usage", False),
    )


def _api_key(raw: dict) -> str:
    if raw.get("api_key_file"):
        try:
            key = Path(raw["api_key_file"]).read_text(encoding="utf-8").strip()
        except (OSError, TypeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise BadInput(f"api_key_file cannot be read: {reason}.", field="api_key_file") from exc
    else:
        key = raw.get("api_key") or ""
    # It goes into a header line: no control characters (and never into a message).
    if not isinstance(key, str) or any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise BadInput("the API key must be one line of printable text.", field="api_key")
    return key


def _metrics_urls(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_METRICS_URLS:
        raise BadInput(f"metrics_urls must be a list of at most {MAX_METRICS_URLS} URLs.", field="metrics_urls")
    for url in raw:
        parts = urlsplit(url) if isinstance(url, str) else None
        if not parts or parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
            raise BadInput("each of metrics_urls must be an http(s) URL.", field="metrics_urls")
        try:
            parts.port  # noqa: B018 (a port out of range or not a number raises here)
        except ValueError:
            raise BadInput("each of metrics_urls must have a valid port.", field="metrics_urls") from None
        if any(ord(c) < 33 or ord(c) == 127 for c in url):
            raise BadInput("each of metrics_urls must be one URL without spaces.", field="metrics_urls")
    return tuple(raw)


def _kv_budgets(raw: Any, urls: tuple[str, ...]) -> dict[str, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or any(url not in urls for url in raw):
        raise BadInput("kv_budgets must map some of metrics_urls to token counts.", field="kv_budgets")
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in raw.values()):
        raise BadInput("each of kv_budgets must be a positive whole number of tokens.", field="kv_budgets")
    return dict(raw)


def _gpu_indexes(raw: Any) -> tuple[int, ...]:
    if raw is None:
        return ()
    ok = isinstance(raw, list) and len(raw) <= MAX_METRICS_URLS
    if not ok or not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_GPU_INDEX for i in raw):
        message = f"gpu_indexes must be a list of at most {MAX_METRICS_URLS} GPU indexes (0 to {MAX_GPU_INDEX})."
        raise BadInput(message, field="gpu_indexes")
    return tuple(sorted(set(raw)))


def _nvml_module(raw: Any) -> str:
    if raw is None:
        return "pynvml"
    if not isinstance(raw, str) or len(raw) > 200 or not MODULE_NAME.fullmatch(raw):
        raise BadInput("nvml_module must be a dotted module name.", field="nvml_module")
    return raw


def parse_spec(raw: dict[str, Any]) -> LoadSpec:
    _unknown(raw, FIELDS, "")
    base_url = raw.get("base_url")
    parts = urlsplit(base_url) if isinstance(base_url, str) else None
    if not parts or parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise BadInput("base_url must be an http(s) URL without query (the gateway's root).", field="base_url")
    if raw.get("dialect") not in DIALECTS:
        raise BadInput(f"dialect must be one of {', '.join(DIALECTS)}.", field="dialect")
    model = raw.get("model") or ""
    if not isinstance(model, str) or (raw["dialect"] != "tgi-generate-stream" and not model):
        raise BadInput("model must name the served model for the OpenAI dialects.", field="model")
    workload = raw.get("workload")
    if not isinstance(workload, dict):
        raise BadInput("workload must be an object with prompt_tokens and output_tokens.", field="workload")
    _unknown(workload, {"prompt_tokens", "output_tokens", "tokenizer"}, "workload.")
    for key in ("prompt_tokens", "output_tokens"):
        if key not in workload:
            raise BadInput(f"workload.{key} is required.", field=f"workload.{key}")
    tokenizer = workload.get("tokenizer")
    if tokenizer is not None and not isinstance(tokenizer, str):
        raise BadInput("workload.tokenizer must be a path.", field="workload.tokenizer")
    steps = raw.get("steps")
    if not isinstance(steps, list) or not 1 <= len(steps) <= MAX_STEPS:
        raise BadInput(f"steps must be a list of 1 to {MAX_STEPS} steps.", field="steps")
    raw_path = raw.get("raw_path")
    if raw_path is not None and not isinstance(raw_path, str):
        raise BadInput("raw_path must be a path.", field="raw_path")
    if not isinstance(raw.get("tls_verify", True), bool):
        raise BadInput("tls_verify must be true or false.", field="tls_verify")
    return LoadSpec(
        base_url=base_url.rstrip("/"),
        dialect=raw["dialect"],
        prompt_tokens=LengthDistribution.parse(workload["prompt_tokens"], "workload.prompt_tokens"),
        output_tokens=LengthDistribution.parse(workload["output_tokens"], "workload.output_tokens"),
        steps=[_step(step, index, raw) for index, step in enumerate(steps)],
        api_key=_api_key(raw),
        model=model,
        tokenizer=tokenizer,
        sampling=_sampling(raw.get("sampling")),
        seed=_number(raw, "seed", "", low=0, high=2**63 - 1, whole=True, default=0),
        request_timeout_s=float(_number(raw, "request_timeout_s", "", low=1, high=3600, default=300.0)),
        tls_verify=raw.get("tls_verify", True),
        raw_path=raw_path,
        metrics_urls=_metrics_urls(raw.get("metrics_urls")),
        kv_budgets=_kv_budgets(raw.get("kv_budgets"), _metrics_urls(raw.get("metrics_urls"))),
        gpu_indexes=_gpu_indexes(raw.get("gpu_indexes")),
        nvml_module=_nvml_module(raw.get("nvml_module")),
    )

"""The tuning loop's suggestions: from a benchmark's figures, the deployment's spec and the planner, the spec
changes worth trying next (issue 17, point 5). Pure: plain values in, plain values out, no models imported.

Each rule reads the figures for one bottleneck, proposes one change of the backend's own spec fields, and keeps it
only when the backend's spec checks take it (`Backend.check_spec`) and the planner says it fits (`Planner`). A rule
tries its largest step first and falls back to smaller ones, so a planner that refuses a big change may still take
a smaller one. Figures that show no bottleneck give no suggestion and a note that says so.

The planner is a callable from spec values to a `PlannerView`; `sizing_planner` builds one from the checkpoint's
metadata and the size of the server's GPUs with deployments.sizing (no database), and tests pass their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from django.utils.translation import gettext as _

from deployments.backends import get_backend
from deployments.backends.base import SpecError
from deployments.sizing import SizingError, size_model, uniform_gpus
from deployments.sizing.memory import TGI_WIGGLE_ROOM
from deployments.sizing.metadata import ModelMetadata
from deployments.sizing.vllm import VllmLimits

# Thresholds, each a judgement from the field's tuning guides (TGI's and vLLM's docs on batching and memory):
QUEUE_WAITING = 2.0  # mean requests waiting in the server's queue during the step: more than a stray arrival
QUEUE_SHARE_OF_TTFT = 0.5  # server-reported queue time at least half the TTFT: TTFT is mostly waiting
KV_FULL = 0.85  # KV cache (TGI: batch tokens / max_batch_total_tokens; vLLM: kv_cache_usage_perc) this full is the cap
LONG_PROMPT = 1024  # prompts this long make prefill, not decode, the first token's cost
PREFILL_SHARE_OF_TTFT = 0.5  # server-reported prefill time at least half the TTFT
PREFILL_TTFT_ITL_RATIO = 20  # without server timing: a TTFT 20x the inter-token latency is a prefill, not a token
GPU_SATURATED = 0.9  # the busiest GPU of the server this busy (0..1)
FLAT_THROUGHPUT = 1.1  # the last step's output tokens/s less than 10 % above the one before: more load adds nothing
# fp8 KV cache halves each token's KV bytes against fp16/bf16, so about twice the tokens fit (vLLM's "Quantized KV
# Cache" docs: a throughput gain, no latency gain). e4m3 keeps more mantissa than e5m2 and is vLLM's "fp8" (the
# spec's name maps to vLLM's fp8_e4m3) and a TGI --kv-cache-dtype choice; without calibrated scales both use 1.0.
FP8_KV = "fp8_e4m3fn"
# HTTP statuses the servers answer a too-long request with: TGI's validation error 422, vLLM's 400.
LENGTH_STATUSES = {"tgi": "http_422", "vllm": "http_400"}
# Spec fields every backend takes besides its own `spec_fields` (placement, not the server's flags).
PLACEMENT_FIELDS = frozenset({"num_shard"})
# Values a spec has when a caller leaves them out (DeploymentSpec's defaults), so the backend checks can run.
SPEC_DEFAULTS: dict[str, Any] = {
    "quantize": "",
    "dtype": "",
    "kv_cache_dtype": "",
    "extra_env": {},
    "lora_adapters": [],
    "device": "gpu",
    "gpu_indexes": [],
    "num_shard": None,
    "cuda_memory_fraction": 1.0,
    "max_concurrent_requests": 128,
}


@dataclass(frozen=True)
class StepFigures:
    """One step of a benchmark: the client's figures (workers/jobs/bench_figures.py names) and the server's
    metrics scraped during it. None: not measured."""

    concurrency: int | None = None
    rate: float | None = None
    requests: int = 0
    requests_failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    ttft_ms_p50: float | None = None
    ttft_ms_p90: float | None = None
    ttft_ms_p99: float | None = None
    itl_ms_p50: float | None = None
    itl_ms_p99: float | None = None
    e2e_ms_p50: float | None = None
    e2e_ms_p99: float | None = None
    output_tokens_per_s: float | None = None
    total_tokens_per_s: float | None = None
    requests_per_s: float | None = None
    prompt_tokens_mean: float | None = None
    prompt_tokens_max: int | None = None  # the workload's longest prompt
    output_tokens_max: int | None = None  # the workload's max_new_tokens
    # Server metrics (TGI: tgi_queue_size, tgi_batch_current_size, batch tokens; vLLM: num_requests_waiting,
    # num_requests_running, kv_cache_usage_perc; both: queue and prefill time histograms' means).
    queue_size_mean: float | None = None
    queue_size_max: float | None = None
    batch_size_mean: float | None = None
    batch_size_max: float | None = None
    batch_tokens_max: float | None = None
    kv_cache_usage_max: float | None = None  # 0..1
    queue_time_ms_mean: float | None = None
    prefill_time_ms_mean: float | None = None
    gpu_utilization_max: float | None = None  # the busiest of the server's GPUs, 0..1

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StepFigures:
        """From a stored step's figures; keys this engine does not read are left out."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})


@dataclass(frozen=True)
class PlannerView:
    """The planner on one set of spec values: does it fit, and the limits it works out (defaults filled in)."""

    fits: bool
    reason: str = ""
    kv_tokens: int | None = None  # tokens the KV cache holds (TGI: the max_batch_total_tokens warm-up would find)
    limits: dict[str, Any] = field(default_factory=dict)  # effective max_batch_prefill_tokens, max_num_seqs, ...


Planner = Callable[[dict[str, Any]], PlannerView]


@dataclass(frozen=True)
class HostView:
    """What the deployment's host offers beside the server: free GPUs it could shard onto (NVLink peers of the
    server's GPUs where the inventory knows the topology) and the model's attention heads."""

    free_peer_gpus: int = 0
    num_heads: int | None = None
    num_kv_heads: int | None = None


@dataclass(frozen=True)
class Suggestion:
    """A proposed spec change: what, the figures that show it, the change itself and what it should do."""

    rule: str
    title: str
    why: str
    change: dict[str, Any]
    effect: str

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "title": self.title, "why": self.why, "change": self.change, "effect": self.effect}


@dataclass
class Advice:
    """The suggestions, and notes: why none shows, or which change the checks or the planner refused."""

    suggestions: list[Suggestion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Context:
    backend: str
    spec: dict[str, Any]
    planner: Planner
    checkpoint: dict[str, Any]
    host: HostView
    current: PlannerView
    steps: list[StepFigures]
    notes: list[str]

    @property
    def peak(self) -> StepFigures:
        return self.steps[-1]

    def limit(self, name: str) -> Any:
        """A limit as the server runs it: the spec's value, else the planner's default."""
        value = self.spec.get(name)
        return value if value not in (None, "") else self.current.limits.get(name)


def suggest(
    steps: Sequence[StepFigures | dict[str, Any]],
    spec: dict[str, Any],
    planner: Planner,
    *,
    checkpoint: dict[str, Any] | None = None,
    host: HostView | None = None,
) -> list[Suggestion]:
    """The spec changes the figures call for (see `advise`)."""
    return advise(steps, spec, planner, checkpoint=checkpoint, host=host).suggestions


def advise(
    steps: Sequence[StepFigures | dict[str, Any]],
    spec: dict[str, Any],
    planner: Planner,
    *,
    checkpoint: dict[str, Any] | None = None,
    host: HostView | None = None,
) -> Advice:
    """Suggestions for a deployment from its benchmark `steps` (in sweep order: the last is the heaviest load),
    its spec values (`backend` and its fields) and the planner. Every change passes the backend's checks and the
    planner; the notes say when no figure shows a bottleneck, and which change was refused."""
    figures = [step if isinstance(step, StepFigures) else StepFigures.from_dict(step) for step in steps]
    backend = spec.get("backend") or "tgi"
    own = get_backend(backend).spec_fields | PLACEMENT_FIELDS | {"device", "gpu_indexes"}
    values = {**{k: v for k, v in SPEC_DEFAULTS.items() if k in own}, **spec, "backend": backend}
    context = _Context(backend, values, planner, checkpoint or {}, host or HostView(), planner(values), figures, [])
    if not figures:
        return Advice(notes=[_("The benchmark has no step to read figures from.")])
    suggestions = [s for rule in RULES if (s := rule(context)) is not None]
    if not suggestions and not context.notes:
        context.notes.append(
            _(
                "No bottleneck shows at the heaviest step (%(load)s): the queue stays short, the KV cache and the "
                "GPUs have room and no request was refused for its length. No spec change is suggested."
            )
            % {"load": _load(context.peak)}
        )
    return Advice(suggestions, context.notes)


# --- the rules -----------------------------------------------------------------------------------------------


def queue_memory_headroom(ctx: _Context) -> Suggestion | None:
    """The queue is long and the batch is capped by the KV cache while the GPU has memory the server leaves
    unused: give it more. TGI's warm-up sizes max_batch_total_tokens from cuda_memory_fraction of the free memory;
    vLLM fills gpu_memory_utilization of each GPU and the KV cache gets what the weights leave."""
    peak = ctx.peak
    if not (_queueing(peak) and _kv_bound(ctx)):
        return None
    name, top = ("cuda_memory_fraction", 1.0) if ctx.backend == "tgi" else ("gpu_memory_utilization", 0.95)
    now = float(ctx.limit(name) or get_backend(ctx.backend).memory.default_utilization or 1.0)
    if now >= top:
        return None
    ladder = [round(v, 2) for v in (top, now + 0.1, now + 0.05) if now < v <= top]
    found = _first_fitting(ctx, name, ladder, grows_kv=True)
    if found is None:
        return None
    value, after = found
    return Suggestion(
        rule="queue_memory_headroom",
        title=_("Give the KV cache more GPU memory (%(field)s %(old)s → %(new)s)")
        % {"field": name, "old": f"{now:g}", "new": f"{value:g}"},
        why=_queue_why(ctx) + " " + _kv_why(ctx),
        change={name: value},
        effect=_kv_effect(ctx, after),
    )


def queue_more_sequences(ctx: _Context) -> Suggestion | None:
    """vLLM: the queue waits while the running batch sits at max_num_seqs and the KV cache has room: the
    sequence cap, not memory, is the limit (vLLM's tuning guide: raise max_num_seqs)."""
    peak = ctx.peak
    seqs = ctx.limit("max_num_seqs")
    if ctx.backend != "vllm" or not seqs or not _queueing(peak) or _kv_bound(ctx):
        return None
    if peak.batch_size_max is None or peak.batch_size_max < seqs:
        return None
    ladder = [seqs * 4, seqs * 2, math.ceil(seqs * 1.5)]
    found = _first_fitting(ctx, "max_num_seqs", ladder)
    if found is None:
        return None
    value, _after = found
    return Suggestion(
        rule="queue_more_sequences",
        title=_("Run more sequences per batch (max_num_seqs %(old)s → %(new)s)") % {"old": seqs, "new": value},
        why=_queue_why(ctx)
        + " "
        + _("The batch ran %(batch)s sequences, the max_num_seqs cap, while the KV cache was %(usage)s full.")
        % {"batch": f"{peak.batch_size_max:g}", "usage": _percent(peak.kv_cache_usage_max)},
        change={"max_num_seqs": value},
        effect=_("Up to %(new)s requests run at once instead of %(old)s: queue time and TTFT at %(load)s should drop.")
        % {"new": value, "old": seqs, "load": _load(peak)},
    )


def fp8_kv_cache(ctx: _Context) -> Suggestion | None:
    """The KV cache is the limit (the batch stops growing at a full cache while requests wait): an fp8 KV cache
    holds twice the tokens in the same memory (TGI's and vLLM's --kv-cache-dtype), at a small accuracy cost."""
    if ctx.spec.get("kv_cache_dtype") or not (_queueing(ctx.peak) and _kv_bound(ctx)):
        return None
    found = _first_fitting(ctx, "kv_cache_dtype", [FP8_KV], grows_kv=True)
    if found is None:
        return None
    _value, after = found
    return Suggestion(
        rule="fp8_kv_cache",
        title=_("Store the KV cache in fp8 (kv_cache_dtype %(new)s)") % {"new": FP8_KV},
        why=_queue_why(ctx) + " " + _kv_why(ctx),
        change={"kv_cache_dtype": FP8_KV},
        effect=_kv_effect(ctx, after)
        + " "
        + _("Check the answers' quality after the change: fp8 keys and values lose some precision."),
    )


def prefill_budget(ctx: _Context) -> Suggestion | None:
    """Prefill dominates the TTFT at long prompts and one prefill batch takes fewer prompt tokens than the waiting
    requests bring: a larger prefill budget lets more prompts start together (TGI: max_batch_prefill_tokens; vLLM:
    max_num_batched_tokens, the chunked-prefill token budget of a scheduler step)."""
    peak = ctx.peak
    name = "max_batch_prefill_tokens" if ctx.backend == "tgi" else "max_num_batched_tokens"
    now = ctx.limit(name)
    prompt = peak.prompt_tokens_mean
    if not now or not prompt or prompt < LONG_PROMPT or not _prefill_dominates(peak):
        return None
    arriving = (peak.concurrency or peak.batch_size_max or 1) * prompt
    if arriving <= now:
        return None
    ladder = [now * 4, now * 2]
    if ctx.backend == "tgi" and ctx.current.kv_tokens:
        # TGI refuses a prefill budget above max_batch_total_tokens (the router's check).
        ladder = [min(v, ctx.current.kv_tokens) for v in ladder]
    found = _first_fitting(ctx, name, sorted({v for v in ladder if v > now}, reverse=True))
    if found is None:
        return None
    value, _after = found
    return Suggestion(
        rule="prefill_budget",
        title=_("Prefill more prompt tokens per batch (%(field)s %(old)s → %(new)s)")
        % {"field": name, "old": now, "new": value},
        why=_prefill_why(peak)
        + " "
        + _("%(count)s requests of about %(prompt)s prompt tokens bring %(arriving)s tokens; a prefill takes %(now)s.")
        % {
            "count": peak.concurrency or f"{peak.batch_size_max:g}",
            "prompt": round(prompt),
            "arriving": round(arriving),
            "now": now,
        },
        change={name: value},
        effect=_("About %(factor)sx the prompts start in one prefill: TTFT at %(load)s should drop.")
        % {"factor": f"{value / now:g}", "load": _load(peak)},
    )


def shard_onto_peer(ctx: _Context) -> Suggestion | None:
    """One GPU is saturated and more load adds no throughput while a peer GPU on the host is free: tensor
    parallelism over one more GPU splits each step's work (the shard count must divide the attention heads)."""
    peak = ctx.peak
    if ctx.spec.get("gpu_indexes") or ctx.host.free_peer_gpus < 1:
        return None  # GPUs chosen by hand are the user's to change
    if peak.gpu_utilization_max is None or peak.gpu_utilization_max < GPU_SATURATED:
        return None
    if not (_flat_throughput(ctx.steps) or _queueing(peak)):
        return None
    now = int(ctx.spec.get("num_shard") or ctx.current.limits.get("num_shard") or 1)
    ladder = [n for n in range(now + 1, now + ctx.host.free_peer_gpus + 1) if _divides_heads(ctx.host, n)]
    found = _first_fitting(ctx, "num_shard", ladder)  # the smallest set that fits first
    if found is None:
        return None
    value, _after = found
    return Suggestion(
        rule="shard_onto_peer",
        title=_("Shard over %(new)s GPUs (num_shard %(old)s → %(new)s)") % {"old": now, "new": value},
        why=_(
            "The busiest GPU was %(busy)s busy at %(load)s and output rose only from %(before)s to %(after)s "
            "tokens/s; %(free)s GPU(s) beside it are free."
        )
        % {
            "busy": _percent(peak.gpu_utilization_max),
            "load": _load(peak),
            "before": _number(ctx.steps[-2].output_tokens_per_s if len(ctx.steps) > 1 else None),
            "after": _number(peak.output_tokens_per_s),
            "free": ctx.host.free_peer_gpus,
        },
        change={"num_shard": value},
        effect=_(
            "Each forward pass is split over %(new)s GPUs: inter-token latency and TTFT should drop and the KV cache "
            "grows with the freed memory."
        )
        % {"new": value},
    )


def longer_requests(ctx: _Context) -> Suggestion | None:
    """Requests were refused for their length: raise the longest request the server takes, to cover the
    workload's longest prompt and output, if the planner finds the memory (TGI: max_input_tokens and
    max_total_tokens; vLLM: max_model_len)."""
    peak = ctx.peak
    status = LENGTH_STATUSES[ctx.backend]
    refused = sum(step.errors.get(status, 0) for step in ctx.steps)
    if not refused or not peak.prompt_tokens_max:
        return None
    needed_input = int(peak.prompt_tokens_max)
    needed_total = needed_input + int(peak.output_tokens_max or 1)
    if ctx.backend == "tgi":
        total_now, input_now = ctx.limit("max_total_tokens"), ctx.limit("max_input_tokens")
        if total_now and input_now and needed_input <= input_now and needed_total <= total_now:
            return None  # refused for something else
        total = _round_up(max(needed_total, total_now or 0))
        change = {
            "max_input_tokens": max(needed_input, total - int(peak.output_tokens_max or 1)),
            "max_total_tokens": total,
        }
        prefill = ctx.limit("max_batch_prefill_tokens")
        if prefill and prefill < change["max_input_tokens"]:
            change["max_batch_prefill_tokens"] = change["max_input_tokens"]  # TGI: prefill >= max input
        now_text = f"max_input_tokens {input_now}, max_total_tokens {total_now}"
    else:
        length_now = ctx.limit("max_model_len")
        if length_now and needed_total <= length_now:
            return None
        change = {"max_model_len": _round_up(needed_total)}
        now_text = f"max_model_len {length_now}"
    if not _acceptable(ctx, change):
        return None
    return Suggestion(
        rule="longer_requests",
        title=_("Accept longer requests (%(change)s)") % {"change": _change_text(change)},
        why=_(
            "%(refused)s requests were refused for their length (%(status)s): the workload sends prompts up to "
            "%(prompt)s tokens and asks for up to %(output)s new ones; the server takes %(now)s."
        )
        % {
            "refused": refused,
            "status": status,
            "prompt": needed_input,
            "output": peak.output_tokens_max or 1,
            "now": now_text,
        },
        change=change,
        effect=_("Requests up to %(total)s tokens are served instead of refused; each takes more of the KV cache.")
        % {"total": max(v for k, v in change.items() if k in ("max_total_tokens", "max_model_len"))},
    )


def more_concurrent_requests(ctx: _Context) -> Suggestion | None:
    """TGI answers 429 (overloaded) to requests past max_concurrent_requests instead of queueing them: when the
    benchmark ran more at once than that and got 429s, raise the cap to the load it ran (they then wait in the
    queue, which the other rules read)."""
    if ctx.backend != "tgi":
        return None
    refused = sum(step.errors.get("http_429", 0) for step in ctx.steps)
    cap = int(ctx.spec.get("max_concurrent_requests") or 0)
    load = max((step.concurrency or 0 for step in ctx.steps), default=0)
    if not refused or not cap or load <= cap:
        return None
    value = 1 << (load - 1).bit_length()  # the next power of two at or above the load
    if _acceptable(ctx, {"max_concurrent_requests": value}) is None:
        return None
    return Suggestion(
        rule="more_concurrent_requests",
        title=_("Admit more requests at once (max_concurrent_requests %(old)s → %(new)s)") % {"old": cap, "new": value},
        why=_(
            "%(refused)s requests were refused as overloaded (http_429): the benchmark ran %(load)s at once, "
            "the cap is %(cap)s."
        )
        % {"refused": refused, "load": load, "cap": cap},
        change={"max_concurrent_requests": value},
        effect=_("Requests up to %(new)s at once wait in the queue instead of failing.") % {"new": value},
    )


RULES: tuple[Callable[[_Context], Suggestion | None], ...] = (
    longer_requests,
    more_concurrent_requests,
    queue_memory_headroom,
    queue_more_sequences,
    fp8_kv_cache,
    prefill_budget,
    shard_onto_peer,
)


# --- what the figures say --------------------------------------------------------------------------------------


def _queueing(step: StepFigures) -> bool:
    """Requests wait in the server's queue: it holds several on average, or waiting is most of the TTFT."""
    if step.queue_size_mean is not None and step.queue_size_mean >= QUEUE_WAITING:
        return True
    return bool(
        step.queue_time_ms_mean
        and step.ttft_ms_p50
        and step.queue_time_ms_mean >= QUEUE_SHARE_OF_TTFT * step.ttft_ms_p50
    )


def _kv_bound(ctx: _Context) -> bool:
    """The batch stopped growing at a full KV cache (TGI: batch tokens near max_batch_total_tokens)."""
    peak = ctx.peak
    if peak.kv_cache_usage_max is not None:
        return peak.kv_cache_usage_max >= KV_FULL
    if peak.batch_tokens_max is not None and ctx.current.kv_tokens:
        return peak.batch_tokens_max >= KV_FULL * ctx.current.kv_tokens
    return False


def _kv_usage(ctx: _Context) -> float | None:
    peak = ctx.peak
    if peak.kv_cache_usage_max is not None:
        return peak.kv_cache_usage_max
    if peak.batch_tokens_max is not None and ctx.current.kv_tokens:
        return peak.batch_tokens_max / ctx.current.kv_tokens
    return None


def _prefill_dominates(step: StepFigures) -> bool:
    """Most of the first token's time is the prefill: the server says so, or (without its timing) the TTFT is many
    tokens' worth while the queue is short."""
    if not step.ttft_ms_p50:
        return False
    if step.prefill_time_ms_mean is not None:
        return step.prefill_time_ms_mean >= PREFILL_SHARE_OF_TTFT * step.ttft_ms_p50
    if _queueing(step) and step.queue_time_ms_mean is not None:
        return False
    return bool(step.itl_ms_p50 and step.ttft_ms_p50 >= PREFILL_TTFT_ITL_RATIO * step.itl_ms_p50)


def _flat_throughput(steps: list[StepFigures]) -> bool:
    if len(steps) < 2 or not steps[-1].output_tokens_per_s or not steps[-2].output_tokens_per_s:
        return False
    return steps[-1].output_tokens_per_s < FLAT_THROUGHPUT * steps[-2].output_tokens_per_s


def _divides_heads(host: HostView, shards: int) -> bool:
    """TGI and vLLM split attention heads evenly, and KV heads too unless there is one (MQA)."""
    if host.num_heads is None:
        return True  # the planner and the backend checks still judge it
    if host.num_heads % shards:
        return False
    return not (host.num_kv_heads and host.num_kv_heads > 1 and host.num_kv_heads % shards)


# --- the checks every change passes ----------------------------------------------------------------------------


def _first_fitting(
    ctx: _Context, name: str, ladder: Iterable[Any], *, grows_kv: bool = False
) -> tuple[Any, PlannerView] | None:
    """The first value of `ladder` (largest first) the backend and the planner take, with the planner's view; a
    change meant to grow the KV cache must grow it by the planner's count."""
    for value in ladder:
        change = {name: value}
        after = _acceptable(ctx, change)
        if after is None:
            continue
        if grows_kv and ctx.current.kv_tokens and (after.kv_tokens or 0) <= ctx.current.kv_tokens:
            continue
        return value, after
    return None


def _acceptable(ctx: _Context, change: dict[str, Any]) -> PlannerView | None:
    """The planner's view of the changed spec when the backend's checks and the planner take it, else None (and
    a note saying who refused it)."""
    backend = get_backend(ctx.backend)
    foreign = [name for name in change if name not in backend.spec_fields | PLACEMENT_FIELDS]
    if foreign:  # a rule's mistake, never a user's: say it loudly
        raise ValueError(f"{backend.name} has no spec field {', '.join(foreign)}")
    values = {**ctx.spec, **change}
    try:
        backend.check_spec(values, ctx.checkpoint)
    except SpecError as error:
        ctx.notes.append(
            _("Not suggested: %(change)s (%(reason)s)") % {"change": _change_text(change), "reason": error.message}
        )
        return None
    after = ctx.planner(values)
    if not after.fits:
        ctx.notes.append(
            _("Not suggested: %(change)s; the planner says it does not fit (%(reason)s).")
            % {"change": _change_text(change), "reason": after.reason or _("no reason given")}
        )
        return None
    return after


# --- words -----------------------------------------------------------------------------------------------------


def _load(step: StepFigures) -> str:
    if step.concurrency:
        return _("concurrency %(n)s") % {"n": step.concurrency}
    if step.rate:
        return _("%(rate)s requests/s") % {"rate": f"{step.rate:g}"}
    return _("the last step")


def _queue_why(ctx: _Context) -> str:
    peak = ctx.peak
    return _(
        "At %(load)s the server's queue held %(queue)s requests on average and they waited %(wait)s ms of a "
        "%(ttft)s ms median TTFT."
    ) % {
        "load": _load(peak),
        "queue": _number(peak.queue_size_mean),
        "wait": _number(peak.queue_time_ms_mean),
        "ttft": _number(peak.ttft_ms_p50),
    }


def _kv_why(ctx: _Context) -> str:
    return _("The KV cache was %(usage)s full (%(tokens)s tokens), so the batch could not take them.") % {
        "usage": _percent(_kv_usage(ctx)),
        "tokens": _number(ctx.current.kv_tokens),
    }


def _kv_effect(ctx: _Context, after: PlannerView) -> str:
    before, now = ctx.current.kv_tokens, after.kv_tokens
    if before and now:
        return _(
            "The planner's KV cache grows from %(before)s to %(after)s tokens (+%(gain)s %%): about that many more "
            "requests fit in a batch, so queue time and TTFT at %(load)s should drop."
        ) % {
            "before": f"{before:,}",
            "after": f"{now:,}",
            "gain": round(100 * (now - before) / before),
            "load": _load(ctx.peak),
        }
    return _("More requests fit in a batch, so queue time and TTFT at %(load)s should drop.") % {
        "load": _load(ctx.peak)
    }


def _prefill_why(step: StepFigures) -> str:
    if step.prefill_time_ms_mean is not None:
        return _("At %(load)s prefill took %(prefill)s ms of a %(ttft)s ms median TTFT.") % {
            "load": _load(step),
            "prefill": _number(step.prefill_time_ms_mean),
            "ttft": _number(step.ttft_ms_p50),
        }
    return _("At %(load)s the median TTFT was %(ttft)s ms against %(itl)s ms between tokens.") % {
        "load": _load(step),
        "ttft": _number(step.ttft_ms_p50),
        "itl": _number(step.itl_ms_p50),
    }


def _change_text(change: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value}" for name, value in change.items())


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:,.1f}".removesuffix(".0")


def _percent(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.0f} %"


def _round_up(tokens: int) -> int:
    """The next multiple of 1024: limits people read and set."""
    return -(-tokens // 1024) * 1024


# --- the planner, from plain values ----------------------------------------------------------------------------


def sizing_planner(metadata: ModelMetadata, *, gpu_memory_bytes: int, gpu_free_bytes: int | None = None) -> Planner:
    """A planner over deployments.sizing for a server on GPUs of `gpu_memory_bytes` each (`gpu_free_bytes` free for
    it, e.g. less what other servers use): size_model on as many of them as the spec shards over."""

    def plan(values: dict[str, Any]) -> PlannerView:
        backend = get_backend(values.get("backend") or "tgi")
        shards = int(values.get("num_shard") or len(values.get("gpu_indexes") or []) or 1)
        gpus = uniform_gpus(shards, gpu_memory_bytes)
        if gpu_free_bytes is not None:
            gpus = [type(g)(g.index, g.name, g.memory_total, gpu_free_bytes) for g in gpus]
        vllm = None
        tgi: dict[str, Any] = {}
        if backend.memory.reserves:
            vllm = VllmLimits(
                gpu_memory_utilization=values.get("gpu_memory_utilization") or backend.memory.default_utilization,
                max_model_len=values.get("max_model_len"),
                max_num_seqs=values.get("max_num_seqs"),
                max_num_batched_tokens=values.get("max_num_batched_tokens"),
            )
        else:
            tgi = {n: values.get(n) for n in ("max_input_tokens", "max_total_tokens", "max_batch_prefill_tokens")}
        try:
            report = size_model(
                metadata,
                quantize=values.get("quantize") or None,
                kv_cache_dtype=values.get("kv_cache_dtype") or None,
                keep_free_fraction=backend.memory.keep_free_fraction,
                gpus=gpus,
                vllm=vllm,
                **tgi,
            )
        except SizingError as error:
            return PlannerView(fits=False, reason=error.text(_))
        reason = "; ".join(report.warnings)
        if report.vllm is not None:
            memory = report.vllm
            limits = {
                "max_model_len": memory.max_model_len,
                "max_num_seqs": memory.max_num_seqs,
                "max_num_batched_tokens": memory.max_num_batched_tokens,
                "gpu_memory_utilization": memory.gpu_memory_utilization,
                "num_shard": shards,
            }
            return PlannerView(bool(report.fits), reason, memory.kv_tokens, limits)
        return _tgi_view(report, values, gpus[0].memory_free, shards, reason)

    return plan


def _tgi_view(report: Any, values: dict[str, Any], free: int, shards: int, reason: str) -> PlannerView:
    """TGI's warm-up: the KV cache gets cuda_memory_fraction x the wiggle room of each GPU's free memory, less what
    the weights, the CUDA context and the prefill workspace take (flash_causal_lm.py); max_batch_total_tokens is
    that over each token's KV bytes on one shard. It must hold one whole request (max_total_tokens)."""
    budget = report.budget
    estimate = report.primary.estimate
    per_token_per_gpu = max(1, math.ceil(estimate.kv_bytes_per_token / shards))
    non_kv = estimate.per_gpu_bytes - math.ceil(estimate.kv_bytes / shards)
    fraction = float(values.get("cuda_memory_fraction") or 1.0)
    kv_tokens = max(0, int((free * fraction * TGI_WIGGLE_ROOM - non_kv) // per_token_per_gpu))
    limits = {
        "max_input_tokens": budget.max_input_tokens,
        "max_total_tokens": budget.max_total_tokens,
        "max_batch_prefill_tokens": budget.max_batch_prefill_tokens,
        "cuda_memory_fraction": fraction,
        "num_shard": shards,
    }
    # The planner's warnings for TGI are refusals: a shard count that does not divide the heads, weights that do
    # not fit, a max_total_tokens past the model's context.
    fits = report.fits is not False and not reason and kv_tokens >= budget.max_total_tokens
    if not fits:
        reason = reason or _(
            "the KV cache would hold %(tokens)s tokens, less than one request of max_total_tokens %(total)s"
        ) % {"tokens": kv_tokens, "total": budget.max_total_tokens}
    return PlannerView(fits, reason if not fits else "", kv_tokens, limits)

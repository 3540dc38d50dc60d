"""The VRAM plan: per-GPU memory for a precision and shard count, the smallest fitting GPU set, plain warnings.

Pure arithmetic on dataclasses; the page, the API and `manage.py size_model` all call `size_model`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from deployments.inventory.placement import GpuState, HostState, PlacementError, Requirement, place
from deployments.sizing import memory
from deployments.sizing.errors import SizingError
from deployments.sizing.memory import WeightFormat
from deployments.sizing.metadata import ModelMetadata
from deployments.sizing.params import Architecture, ParamBreakdown, count_parameters, parse_architecture, text_config
from deployments.units import GB

# TGI: when --max-total-tokens is not given the planner assumes 4096 (capped by the model's context).
DEFAULT_MAX_TOTAL_TOKENS = 4096
# The share of each GPU TGI's warm-up leaves untouched (1 - TGI_WIGGLE_ROOM); placement keeps it free too.
KEEP_FREE_FRACTION = 1 - memory.TGI_WIGGLE_ROOM
# Idle draw as a share of the power limit, from fixtures/nvml-h200.json: 118.6 W drawn idle under a 700 W limit.
POWER_IDLE_FRACTION = 118.565 / 700
# Largest shard count the planner tries when it asks "how many GPUs of this size would do".
MAX_SHARDS_SEARCHED = 64


@dataclass
class GpuCapacity:
    """One GPU as the inventory reports it (bytes and watts)."""

    index: int
    name: str
    memory_total: int
    memory_free: int
    power_limit_w: float | None = None
    nvlink_group: str = ""
    degraded: bool = False  # placement uses it only when nothing healthy fits

    @property
    def usable_bytes(self) -> int:
        """What TGI can fill: free memory minus the (1 - 0.90) x total its warmup leaves untouched."""
        return max(0, self.memory_free - int(KEEP_FREE_FRACTION * self.memory_total))


@dataclass
class HostCapacity:
    """A GPU host; all shards of one TGI server must sit on one host."""

    name: str
    gpus: list[GpuCapacity]
    online: bool = True


def uniform_gpus(
    count: int, memory_bytes: int, name: str = "GPU", power_limit_w: float | None = None
) -> list[GpuCapacity]:
    """`count` identical, empty GPUs: a quick way to ask "does it fit on 2 x 40 GB?"."""
    return [GpuCapacity(i, name, memory_bytes, memory_bytes, power_limit_w) for i in range(count)]


@dataclass(frozen=True)
class TokenBudget:
    """TGI's token limits the KV pool and the prefill workspace are sized from."""

    max_input_tokens: int
    max_total_tokens: int
    max_batch_total_tokens: int
    max_batch_prefill_tokens: int


def token_budget(
    arch: Architecture,
    max_input_tokens: int | None = None,
    max_total_tokens: int | None = None,
    max_batch_total_tokens: int | None = None,
    max_batch_prefill_tokens: int | None = None,
) -> TokenBudget:
    """Fill TGI's defaults and apply its argument checks (launcher and router messages)."""
    limit = arch.max_position_embeddings or DEFAULT_MAX_TOTAL_TOKENS
    for name, value in (
        ("max_input_tokens", max_input_tokens),
        ("max_total_tokens", max_total_tokens),
        ("max_batch_total_tokens", max_batch_total_tokens),
        ("max_batch_prefill_tokens", max_batch_prefill_tokens),
    ):
        if value is not None and int(value) <= 0:
            raise SizingError(f"{name} must be a positive number of tokens", name)
    default_total = min(DEFAULT_MAX_TOTAL_TOKENS, limit)
    if max_input_tokens:  # a longer prompt than the default budget implies room for at least one new token
        default_total = max(default_total, int(max_input_tokens) + 1)
    total = int(max_total_tokens or default_total)
    if max_input_tokens is None and total < 2:
        raise SizingError("max_total_tokens must be at least 2", "max_total_tokens")
    inputs = int(max_input_tokens or total - 1)  # TGI: max_input_tokens defaults to max_total_tokens - 1
    if inputs >= total:
        raise SizingError(f"max_input_tokens ({inputs}) must be < max_total_tokens ({total})", "max_input_tokens")
    batch = int(max_batch_total_tokens or total)
    if batch < total:
        raise SizingError(
            f"max_total_tokens ({total}) must be <= max_batch_total_tokens ({batch})", "max_batch_total_tokens"
        )
    # TGI's launcher default prefill is 4096 capped by the context; we never plan below one full prompt (models that
    # cannot chunk prefill need max_batch_prefill_tokens >= max_input_tokens), nor above the batch pool.
    prefill = int(
        max_batch_prefill_tokens or min(batch, max(min(memory.DEFAULT_MAX_BATCH_PREFILL_TOKENS, limit), inputs))
    )
    if prefill > batch:
        raise SizingError(
            f"max_batch_prefill_tokens ({prefill}) must be <= max_batch_total_tokens ({batch})",
            "max_batch_prefill_tokens",
        )
    return TokenBudget(inputs, total, batch, prefill)


@dataclass(frozen=True)
class ModelShape:
    """Architecture plus parameter breakdown: everything the arithmetic needs about the model."""

    arch: Architecture
    breakdown: ParamBreakdown
    params_source: str  # "safetensors" or "config"
    stored: WeightFormat
    stored_weight_bytes: int | None  # exact, from safetensors headers, for quantized checkpoints


def model_shape(metadata: ModelMetadata) -> ModelShape:
    """Parameters from safetensors headers when they count logical weights, else from the architecture."""
    arch = parse_architecture(metadata.config)
    breakdown = count_parameters(metadata.config)
    stored = memory.stored_format(text_config(metadata.config))
    source, stored_bytes = "config", None
    if metadata.safetensors_params:
        if stored.method is None:
            # Unquantized headers count every weight exactly; keep the architecture's split for the dense part.
            breakdown.extra_linear = sum(metadata.safetensors_params.values()) - breakdown.total
            source = "safetensors"
        else:
            # Packed int32 tensors hide the logical count, but the stored bytes are exact.
            stored_bytes = memory.stored_bytes(metadata.safetensors_params)
    return ModelShape(arch, breakdown, source, stored, stored_bytes)


@dataclass
class MemoryEstimate:
    """Memory for one weight format at one shard count. Per-GPU: weights/S + KV/S + context + workspace."""

    fmt: WeightFormat
    num_shard: int
    weight_bytes: int
    kv_bytes_per_token: int
    kv_bytes: int
    context_bytes: int
    workspace_bytes: int
    per_gpu_bytes: int

    @property
    def overhead_bytes(self) -> int:
        """CUDA context plus prefill workspace on every GPU of the set."""
        return (self.context_bytes + self.workspace_bytes) * self.num_shard

    @property
    def total_bytes(self) -> int:
        """Everything the set holds (per-GPU need times shards; KV replicated when kv heads < shards)."""
        return self.per_gpu_bytes * self.num_shard


def estimate(
    shape: ModelShape, fmt: WeightFormat, budget: TokenBudget, num_shard: int, kv_dtype: int
) -> MemoryEstimate:
    """Per-GPU and total memory for `fmt` split over `num_shard` GPUs by tensor parallelism."""
    if fmt == shape.stored and shape.stored_weight_bytes is not None:
        weights = shape.stored_weight_bytes
    else:
        weights = memory.weight_bytes(shape.breakdown, fmt)
    per_token = memory.kv_bytes_per_token(shape.arch, kv_dtype)
    kv = per_token * budget.max_batch_total_tokens
    # TGI splits the KV heads over shards; with fewer kv heads than shards each shard keeps one (replicated).
    kv_heads = shape.arch.num_kv_heads
    kv_per_gpu = math.ceil(kv * max(1, kv_heads // num_shard) / kv_heads)
    context = memory.CUDA_CONTEXT_BYTES
    workspace = memory.prefill_workspace_bytes(budget.max_batch_prefill_tokens, shape.arch.hidden_size)
    # TGI shards embeddings and lm_head too, so all weights divide by the shard count.
    per_gpu = math.ceil(weights / num_shard) + kv_per_gpu + context + workspace
    return MemoryEstimate(fmt, num_shard, weights, per_token, kv, context, workspace, per_gpu)


def valid_shard_counts(
    arch: Architecture, fmt: WeightFormat | None = None, limit: int = MAX_SHARDS_SEARCHED
) -> list[int]:
    """Shard counts TGI accepts: they divide the attention heads, and the KV heads unless there is one (MQA)."""
    counts = []
    for s in range(1, limit + 1):
        if arch.num_heads % s or (arch.num_kv_heads > 1 and arch.num_kv_heads % s):
            continue
        if fmt is not None and not fmt.shardable and s > 1:
            continue
        counts.append(s)
    return counts


@dataclass
class Placement:
    """A chosen GPU set on one host, with the power it may draw (idle estimate .. sum of limits)."""

    host: str
    gpu_indexes: list[int]
    gpu_names: list[str]
    num_shard: int
    usable_bytes_per_gpu: int
    power_min_w: float | None
    power_max_w: float | None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def placement_for(host: str, gpus: list[GpuCapacity]) -> Placement:
    """A Placement for these GPUs; power from their limits (None when any limit is unknown)."""
    limits = [g.power_limit_w for g in gpus]
    known = all(limit is not None for limit in limits) and bool(limits)
    high = float(sum(limits)) if known else None  # type: ignore[arg-type]
    low = round(high * POWER_IDLE_FRACTION, 1) if high is not None else None
    return Placement(
        host, [g.index for g in gpus], [g.name for g in gpus], len(gpus), min(g.usable_bytes for g in gpus), low, high
    )


def host_state(host: HostCapacity) -> HostState:
    """A host as the placement engine sees it (free memory as what is not reserved)."""
    gpus = tuple(
        GpuState(
            index=g.index,
            memory_total=g.memory_total,
            memory_reserved=g.memory_total - g.memory_free,
            nvlink_group=g.nvlink_group,
            name=g.name,
            power_limit_w=g.power_limit_w,
            degraded=g.degraded,
        )
        for g in host.gpus
    )
    return HostState(name=host.name, gpus=gpus, online=host.online)


_host_state = host_state  # the name training_plan.py imports


def choose_gpus(
    shape: ModelShape,
    fmt: WeightFormat,
    budget: TokenBudget,
    kv_dtype: int,
    inventory: list[HostCapacity],
    num_shard: int | None = None,
    preferred_hosts: Sequence[str] = (),
    keep_free_fraction: float = KEEP_FREE_FRACTION,
) -> tuple[Placement, MemoryEstimate] | None:
    """The smallest GPU set that fits: the fewest shards, then the placement engine's choice (a preferred
    host, one NVLink group, best fit), or None."""
    hosts = [h for h in inventory if h.online and h.gpus]
    if not hosts:
        return None
    states = [host_state(h) for h in hosts]
    most = max(len(h.gpus) for h in hosts)
    counts = [num_shard] if num_shard else valid_shard_counts(shape.arch, fmt, most)
    for s in counts:
        if s > most or s not in valid_shard_counts(shape.arch, fmt, s):
            continue
        est = estimate(shape, fmt, budget, s, kv_dtype)
        requirement = Requirement(
            memory_per_gpu=max(1, est.per_gpu_bytes),
            gpu_count=s,
            preferred_hosts=tuple(preferred_hosts),
            keep_free_fraction=keep_free_fraction,
        )
        try:
            chosen = place(requirement, states)
        except PlacementError:
            continue
        host = next(h for h in hosts if h.name == chosen.host)
        gpus = [g for g in host.gpus if g.index in chosen.gpu_indexes]
        return placement_for(host.name, gpus), est
    return None


def gpus_needed(shape: ModelShape, fmt: WeightFormat, budget: TokenBudget, kv_dtype: int, usable: int) -> int | None:
    """Fewest GPUs with `usable` bytes each (a valid shard count) that hold the model, or None."""
    for s in valid_shard_counts(shape.arch, fmt):
        if estimate(shape, fmt, budget, s, kv_dtype).per_gpu_bytes <= usable:
            return s
    return None


def format_gb(value: float) -> str:
    """Bytes as GB (10^9) for messages: whole numbers from 10 GB, one decimal below."""
    gb = value / GB
    return f"{gb:.0f}" if gb >= 10 else f"{gb:.1f}"

"""The planner's answer: a row per weight format (memory, fit, GPUs, power) and the report around them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deployments.sizing import memory
from deployments.sizing.errors import SizingError
from deployments.sizing.memory import WeightFormat
from deployments.sizing.plan import POWER_IDLE_FRACTION, MemoryEstimate, Placement, TokenBudget
from deployments.sizing.vllm import VllmMemory


@dataclass
class PrecisionRow:
    """One line of the table: memory for a precision and where it would run."""

    fmt: WeightFormat
    estimate: MemoryEstimate
    fits: bool | None
    gpu_set: Placement | None
    stored: bool
    note: str = ""
    vllm: VllmMemory | None = None  # vLLM specs: its share of each GPU and the KV cache it leaves
    vllm_notes: tuple[SizingError, ...] = ()  # vLLM specs: why it does not run now (busy GPUs), translatable

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        est, gpu_set = self.estimate, self.gpu_set
        power = None
        if gpu_set is not None and gpu_set.power_max_w is not None:
            power = {"min_w": gpu_set.power_min_w, "max_w": gpu_set.power_max_w}
        return {
            "precision": self.fmt.precision,
            "label": self.fmt.label,
            "tgi_quantize": self.fmt.tgi_quantize,
            "stored": self.stored,
            "weight_bytes": est.weight_bytes,
            "kv_bytes": est.kv_bytes,
            "overhead_bytes": est.overhead_bytes,
            "total_bytes": est.total_bytes,
            "per_gpu_bytes": est.per_gpu_bytes,
            "num_shard": est.num_shard,
            "fits": self.fits,
            "gpu_set": gpu_set.as_dict() if gpu_set else None,
            "power_range_w": power,
            "note": self.note,
            "vllm": self.vllm.as_dict() if self.vllm else None,
        }


@dataclass
class SizingReport:
    """The planner's answer for one model and one set of TGI limits."""

    source: str
    revision_sha: str | None
    model_type: str
    params: int
    params_source: str
    primary: PrecisionRow
    kv_cache_dtype: str | None
    budget: TokenBudget
    kv_bytes_per_token_latent: int | None
    valid_shard_counts: list[int]
    rows: list[PrecisionRow]
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    memory_mode: str = "fill"  # "reserve" for vLLM (MemorySemantics.mode)
    vllm_notes: list[SizingError] = field(default_factory=list)  # vLLM: the warnings, translatable

    @property
    def vllm(self) -> VllmMemory | None:
        """vLLM specs: the primary row's share of each GPU and the KV cache it leaves."""
        return self.primary.vllm

    # The headline numbers are those of the primary row (the stored format, or the one --quantize asks for).
    @property
    def weight_bytes(self) -> int:
        """Weights in the primary format."""
        return self.primary.estimate.weight_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes per token as TGI allocates it, whole model (all shards)."""
        return self.primary.estimate.kv_bytes_per_token

    @property
    def kv_bytes(self) -> int:
        """The KV pool: max_batch_total_tokens x bytes per token."""
        return self.primary.estimate.kv_bytes

    @property
    def overhead_bytes(self) -> int:
        """CUDA context plus prefill workspace, summed over the GPUs."""
        return self.primary.estimate.overhead_bytes

    @property
    def total_bytes(self) -> int:
        """All GPUs together."""
        return self.primary.estimate.total_bytes

    @property
    def per_gpu_bytes(self) -> int:
        """What each GPU must hold."""
        return self.primary.estimate.per_gpu_bytes

    @property
    def num_shard(self) -> int:
        """Tensor-parallel shard count of the plan."""
        return self.primary.estimate.num_shard

    @property
    def fits(self) -> bool | None:
        """True/False against the given GPUs or inventory; None when no GPUs were given."""
        return self.primary.fits

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form used by the API and `size_model --json`."""
        primary = self.primary.as_dict()
        est = self.primary.estimate
        return {
            "source": self.source,
            "revision_sha": self.revision_sha,
            "model_type": self.model_type,
            "params": self.params,
            "params_source": self.params_source,
            "precision": self.primary.fmt.precision,
            "weight_format": self.primary.fmt.label,
            "quantize": self.primary.fmt.tgi_quantize,
            "kv_cache_dtype": self.kv_cache_dtype,
            "max_input_tokens": self.budget.max_input_tokens,
            "max_total_tokens": self.budget.max_total_tokens,
            "max_batch_total_tokens": self.budget.max_batch_total_tokens,
            "max_batch_prefill_tokens": self.budget.max_batch_prefill_tokens,
            "weight_bytes": self.weight_bytes,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_bytes_per_token_latent": self.kv_bytes_per_token_latent,
            "kv_bytes": self.kv_bytes,
            "context_bytes_per_gpu": est.context_bytes,
            "workspace_bytes_per_gpu": est.workspace_bytes,
            "overhead_bytes": self.overhead_bytes,
            "total_bytes": self.total_bytes,
            "per_gpu_bytes": self.per_gpu_bytes,
            "num_shard": self.num_shard,
            "valid_shard_counts": self.valid_shard_counts,
            "fits": self.fits,
            "gpu_set": primary["gpu_set"],
            "power_range_w": primary["power_range_w"],
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "memory_mode": self.memory_mode,
            "vllm": primary["vllm"],
            "rows": [row.as_dict() for row in self.rows],
            "constants": overhead_constants(),
        }


def overhead_constants() -> dict[str, float]:
    """The assumptions behind the numbers, for display next to them."""
    return {
        "bf16_bytes_per_param": memory.BF16_BYTES_PER_PARAM,
        "cuda_context_bytes_per_gpu": memory.CUDA_CONTEXT_BYTES,
        "prefill_workspace_bytes": memory.PREFILL_WORKSPACE_BYTES,
        "prefill_workspace_reference_tokens": memory.PREFILL_WORKSPACE_TOKENS,
        "prefill_workspace_reference_hidden": memory.PREFILL_WORKSPACE_HIDDEN,
        "tgi_wiggle_room": memory.TGI_WIGGLE_ROOM,
        "quant_group_size": memory.DEFAULT_GROUP_SIZE,
        "power_idle_fraction": round(POWER_IDLE_FRACTION, 4),
    }

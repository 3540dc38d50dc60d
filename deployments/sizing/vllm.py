"""vLLM's GPU memory as its V1 engine sizes it at start: pure arithmetic, no Django.

vLLM's budget on each GPU of its tensor-parallel group is gpu_memory_utilization x the GPU's memory as CUDA reports
it (the share; vllm/v1/worker/utils.py request_memory). Out of the share come the weights of its shard, what it
uses outside PyTorch (NCCL, custom all-reduce), its CUDA graphs (inside the share since vLLM 0.21) and the
activation peak of a profile run: one forward pass of max_num_batched_tokens tokens, then the sampler over
min(max_num_seqs, max_num_batched_tokens) rows (vllm/v1/worker/gpu_worker.py determine_available_memory). The rest
becomes KV-cache blocks. vLLM 0.34's extensible KV cache (the default on CUDA) also keeps max(1 GiB, 0.75 x the
activation peak) of the device free (vllm/v1/worker/extensible_kv_cache.py measure_kv_cache_bytes), and holds one
block back (the block pool's null block). At start vLLM refuses a share with no room for the cache, and a
max_model_len whose one sequence does not fit it (vllm/v1/core/kv_cache_planning.py check_enough_kv_cache_memory).
Its CUDA context comes on top of the share.

Left unset, vLLM 0.34's gpu_memory_utilization is 1.0 with the extensible cache (all free memory): the console
always passes one (MemorySemantics.default_utilization), so a server never grows past what placement reserved.
The activation and runtime figures are estimates fitted to vLLM startup logs (tests/fixtures/vllm-kv).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from deployments.sizing import memory
from deployments.sizing.errors import SizingError, gettext_noop
from deployments.sizing.memory import WeightFormat
from deployments.sizing.params import Architecture
from deployments.sizing.vllm_engine import (
    CUDA_GRAPH_BYTES,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    DEFAULT_MAX_MODEL_LEN,
    DRIVER_RESERVED_BYTES,
    PINNED,
    SMALL_GPU_DEFAULTS,
    Release,
    activation_bytes,
    batch_defaults,
    cuda_total,
    kept_free_bytes,
    kv_bytes_per_token,
    non_torch_bytes,
    share_bytes,
)
from deployments.units import GB

# --quantization values a vLLM spec may carry, as the weight format the planner sizes.
_PREQUANTIZED = frozenset({"awq", "awq_marlin", "gptq", "gptq_marlin", "marlin", "compressed-tensors", "exl2"})
_FP8 = frozenset({"fp8", "fbgemm_fp8"})
_BNB = frozenset({"bitsandbytes", "bitsandbytes-nf4"})


@dataclass(frozen=True)
class VllmLimits:
    """A spec's vLLM settings; None is the default (the batch limits' defaults depend on the GPU)."""

    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None

    @property
    def utilization(self) -> float:
        """The share of each GPU vLLM takes."""
        return self.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION


@dataclass(frozen=True)
class VllmMemory:
    """One GPU of the tensor-parallel group as vLLM sizes it at start (bytes). With GPUs of different sizes it
    is the smallest: vLLM gives every GPU as many blocks as the smallest holds."""

    num_shard: int
    gpu_total_bytes: int
    gpu_memory_utilization: float
    share_bytes: int  # gpu_memory_utilization x the GPU's memory as CUDA reports it
    weight_bytes: int  # this GPU's shard of the weights
    activation_bytes: int  # estimated peak of the profile run
    non_torch_bytes: int  # NCCL and other memory outside PyTorch
    graph_bytes: int  # CUDA graphs taken from the share (0 where they come on top)
    kept_free_bytes: int  # what the extensible KV cache keeps free of the device
    kv_bytes_per_token: int  # on this GPU
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    model_context: int | None
    block_size: int
    null_blocks: int  # blocks the pool holds back

    @property
    def budget_bytes(self) -> int:
        """What vLLM may fill: its share, or the empty GPU less its CUDA context and what it keeps free."""
        room = cuda_total(self.gpu_total_bytes) - memory.CUDA_CONTEXT_BYTES - self.kept_free_bytes
        return min(self.share_bytes, room) if self.kept_free_bytes else self.share_bytes

    @property
    def non_kv_bytes(self) -> int:
        """What the share holds besides the KV cache."""
        return self.weight_bytes + self.activation_bytes + self.non_torch_bytes + self.graph_bytes

    @property
    def kv_cache_bytes(self) -> int:
        """What the budget leaves for the KV cache (negative when the rest does not fit in it)."""
        return self.budget_bytes - self.non_kv_bytes

    @property
    def block_bytes(self) -> int:
        """One block of `block_size` tokens over every layer."""
        return self.block_size * self.kv_bytes_per_token

    @property
    def num_blocks(self) -> int:
        """vLLM's KV blocks on each GPU."""
        return max(0, self.kv_cache_bytes) // self.block_bytes

    @property
    def kv_tokens(self) -> int:
        """vLLM's "GPU KV cache size: N tokens"."""
        return self.num_blocks * self.block_size

    @property
    def blocks_per_sequence(self) -> int:
        """Blocks one sequence of max_model_len tokens takes."""
        return math.ceil(self.max_model_len / self.block_size)

    @property
    def max_concurrency(self) -> float:
        """vLLM's "Maximum concurrency for max_model_len tokens per request: N x"."""
        return self.num_blocks / self.blocks_per_sequence

    @property
    def sequences_by_kv(self) -> int:
        """Sequences of max_model_len tokens the KV cache holds at once."""
        return self.kv_tokens // self.max_model_len

    @property
    def max_sequences(self) -> int:
        """Sequences of max_model_len tokens running at once: the KV cache's answer capped by max_num_seqs."""
        return min(self.sequences_by_kv, self.max_num_seqs)

    @property
    def largest_max_model_len(self) -> int:
        """The longest max_model_len whose one sequence fits the cache (vLLM's estimate_max_model_len)."""
        tokens = max(0, self.num_blocks - self.null_blocks) * self.block_size
        return min(tokens, self.model_context) if self.model_context else tokens

    @property
    def outside_bytes(self) -> int:
        """What vLLM holds beyond its share: its CUDA context (and CUDA graphs in releases before 0.21)."""
        return memory.CUDA_CONTEXT_BYTES + (0 if self.graph_bytes else CUDA_GRAPH_BYTES)

    @property
    def footprint_bytes(self) -> int:
        """What the server holds of this GPU at most (what placement reserves)."""
        return self.share_bytes + self.outside_bytes

    @property
    def start_need_bytes(self) -> int:
        """Free memory the GPU must have for vLLM to fill its share: share, CUDA context, what it keeps free."""
        return self.footprint_bytes + self.kept_free_bytes

    @property
    def most_utilization(self) -> float:
        """The largest gpu_memory_utilization (two decimals) whose share fits this GPU empty, beside the CUDA context
        and what the extensible KV cache keeps free (vLLM 0.34 fills no more than that, whatever the setting)."""
        room = self.gpu_total_bytes - DRIVER_RESERVED_BYTES - self.outside_bytes - self.kept_free_bytes
        return math.floor(100 * room / cuda_total(self.gpu_total_bytes)) / 100

    @property
    def fits(self) -> bool:
        """The budget holds everything else and one sequence of max_model_len."""
        return self.num_blocks - self.null_blocks >= self.blocks_per_sequence

    def utilization_needed(self) -> float:
        """The smallest gpu_memory_utilization (two decimals) whose share holds one sequence of max_model_len."""
        need = self.non_kv_bytes + (self.blocks_per_sequence + self.null_blocks) * self.block_bytes
        return math.ceil(100 * need / cuda_total(self.gpu_total_bytes)) / 100

    def refusal(self, more_gpus: int | None = None) -> SizingError | None:
        """What vLLM says at start when the budget cannot hold one sequence, naming the setting to change."""
        if self.fits:
            return None
        if self.kv_cache_bytes < (1 + self.null_blocks) * self.block_bytes:
            return self._utilization_refusal(more_gpus)
        return SizingError(
            gettext_noop(
                "max_model_len %(length)s does not fit: one sequence of it needs %(needed)s GB of KV cache on each "
                "GPU, and gpu_memory_utilization %(utilization)s leaves %(left)s GB for the KV cache after the "
                "weights and activations. The largest max_model_len that fits is %(largest)s (vLLM refuses a "
                "longer one at start); or raise gpu_memory_utilization or use more GPUs."
            ),
            "max_model_len",
            length=self.max_model_len,
            needed=_gb(self.blocks_per_sequence * self.block_bytes),
            left=_gb(self.kv_cache_bytes),
            utilization=f"{self.gpu_memory_utilization:g}",
            largest=self.largest_max_model_len,
        )

    def _utilization_refusal(self, more_gpus: int | None) -> SizingError:
        params = {
            "utilization": f"{self.gpu_memory_utilization:g}",
            "share": _gb(self.share_bytes),
            "gpu": _gb(self.gpu_total_bytes),
            "weights": _gb(self.weight_bytes),
            "activations": _gb(self.activation_bytes),
            "runtime": _gb(self.non_torch_bytes + self.graph_bytes),
            "needed": _gb(self.non_kv_bytes),
            "suggested": f"{self.utilization_needed():g}",
            "count": more_gpus,
        }
        can_raise = self.utilization_needed() <= self.most_utilization
        # Whole sentences, so makemessages finds each (a message built by `+` would not be translated).
        if can_raise and more_gpus:
            message = gettext_noop(
                "gpu_memory_utilization %(utilization)s gives vLLM %(share)s GB of each %(gpu)s GB GPU; the weights "
                "(%(weights)s GB per GPU), the activation estimate (%(activations)s GB) and runtime memory and CUDA "
                "graphs (%(runtime)s GB) take %(needed)s GB, leaving no room for the KV cache (vLLM refuses this at "
                "start). Raise gpu_memory_utilization to %(suggested)s or use %(count)s GPUs."
            )
        elif can_raise:
            message = gettext_noop(
                "gpu_memory_utilization %(utilization)s gives vLLM %(share)s GB of each %(gpu)s GB GPU; the weights "
                "(%(weights)s GB per GPU), the activation estimate (%(activations)s GB) and runtime memory and CUDA "
                "graphs (%(runtime)s GB) take %(needed)s GB, leaving no room for the KV cache (vLLM refuses this at "
                "start). Raise gpu_memory_utilization to %(suggested)s."
            )
        elif more_gpus:
            message = gettext_noop(
                "gpu_memory_utilization %(utilization)s gives vLLM %(share)s GB of each %(gpu)s GB GPU; the weights "
                "(%(weights)s GB per GPU), the activation estimate (%(activations)s GB) and runtime memory and CUDA "
                "graphs (%(runtime)s GB) take %(needed)s GB, leaving no room for the KV cache (vLLM refuses this at "
                "start). Use %(count)s GPUs, or a smaller quantization."
            )
        else:
            message = gettext_noop(
                "gpu_memory_utilization %(utilization)s gives vLLM %(share)s GB of each %(gpu)s GB GPU; the weights "
                "(%(weights)s GB per GPU), the activation estimate (%(activations)s GB) and runtime memory and CUDA "
                "graphs (%(runtime)s GB) take %(needed)s GB, leaving no room for the KV cache (vLLM refuses this at "
                "start). No setting of this GPU holds it: use a smaller quantization."
            )
        return SizingError(message, "gpu_memory_utilization", **params)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the inputs and every derived figure."""
        derived = (
            "budget_bytes",
            "non_kv_bytes",
            "kv_cache_bytes",
            "block_bytes",
            "num_blocks",
            "kv_tokens",
            "blocks_per_sequence",
            "sequences_by_kv",
            "max_sequences",
            "largest_max_model_len",
            "outside_bytes",
            "footprint_bytes",
            "fits",
        )
        out = {**asdict(self), **{name: getattr(self, name) for name in derived}}
        out["cuda_total_bytes"] = cuda_total(self.gpu_total_bytes)
        out["max_concurrency"] = round(self.max_concurrency, 2)
        return out


def _gb(value: float) -> str:
    """GB (10^9) for messages: one decimal, two below 1 GB."""
    gb = value / GB
    return f"{gb:.2f}" if abs(gb) < 1 else f"{gb:.1f}"


def check_limits(arch: Architecture, limits: VllmLimits, *, max_num_batched_tokens: int, max_num_seqs: int) -> None:
    """vLLM's argument checks the planner can make before any arithmetic (SizingError naming the field)."""
    if not 0 < limits.utilization <= 1:
        raise SizingError(
            gettext_noop("gpu_memory_utilization is a share of each GPU, above 0 and at most 1."),
            "gpu_memory_utilization",
        )
    for name in ("max_model_len", "max_num_seqs", "max_num_batched_tokens"):
        value = getattr(limits, name)
        if value is not None and int(value) < 1:
            raise SizingError(gettext_noop("%(name)s must be a positive number."), name, name=name)
    context = arch.max_position_embeddings
    if limits.max_model_len and context and limits.max_model_len > context:
        raise SizingError(
            gettext_noop(
                "max_model_len %(length)s is longer than the model's context of %(context)s tokens "
                "(max_position_embeddings); vLLM refuses it at start."
            ),
            "max_model_len",
            length=limits.max_model_len,
            context=context,
        )
    if max_num_batched_tokens < max_num_seqs:
        field = "max_num_batched_tokens" if limits.max_num_batched_tokens else "max_num_seqs"
        raise SizingError(
            gettext_noop(
                "max_num_batched_tokens (%(tokens)s) must be at least max_num_seqs (%(seqs)s): vLLM schedules one "
                "token of each sequence per step. Left empty, they follow the GPU: %(tokens_default)s and "
                "%(seqs_default)s on an H100 or H200, %(small_tokens)s and %(small_seqs)s on GPUs under 70 GiB."
            ),
            field,
            tokens=max_num_batched_tokens,
            seqs=max_num_seqs,
            tokens_default=8192,
            seqs_default=1024,
            small_tokens=SMALL_GPU_DEFAULTS[0],
            small_seqs=SMALL_GPU_DEFAULTS[1],
        )


def vllm_memory(
    arch: Architecture,
    config: dict[str, Any],
    weights: int,
    *,
    kv_dtype: int,
    num_shard: int,
    gpu_total: int,
    gpu_name: str = "",
    limits: VllmLimits = VllmLimits(),
    release: Release = PINNED,
) -> VllmMemory:
    """vLLM's start-up arithmetic for `weights` bytes of weights split over `num_shard` GPUs of `gpu_total` bytes
    (the inventory's total) each. Raises SizingError for settings vLLM refuses whatever the memory."""
    default_tokens, default_seqs = batch_defaults(gpu_total, gpu_name, release)
    tokens = int(limits.max_num_batched_tokens or default_tokens)
    seqs = int(limits.max_num_seqs or default_seqs)
    check_limits(arch, limits, max_num_batched_tokens=tokens, max_num_seqs=seqs)
    context = arch.max_position_embeddings
    activation = activation_bytes(arch, config, num_shard, tokens, seqs)
    return VllmMemory(
        num_shard=num_shard,
        gpu_total_bytes=gpu_total,
        gpu_memory_utilization=limits.utilization,
        share_bytes=share_bytes(gpu_total, limits.utilization),
        weight_bytes=math.ceil(weights / num_shard),  # vLLM shards embeddings and lm_head too
        activation_bytes=activation,
        non_torch_bytes=non_torch_bytes(num_shard),
        graph_bytes=CUDA_GRAPH_BYTES if release.graphs_in_share else 0,
        kept_free_bytes=kept_free_bytes(activation, release),
        kv_bytes_per_token=kv_bytes_per_token(arch, kv_dtype, num_shard),
        max_model_len=int(limits.max_model_len or context or DEFAULT_MAX_MODEL_LEN),
        max_num_seqs=seqs,
        max_num_batched_tokens=tokens,
        model_context=context,
        block_size=release.block_size,
        null_blocks=1 if release.null_block else 0,
    )


def quantize_format(quantize: str, config: dict[str, Any], stored: WeightFormat) -> WeightFormat:
    """The weight format vLLM ends up with for a spec's quantization on this checkpoint."""
    key = quantize.strip().lower()
    if key in memory.DTYPE_ALIASES:
        return memory.precision_format(memory.DTYPE_ALIASES[key])
    if stored.method and key in _PREQUANTIZED | _FP8 | _BNB:
        return stored  # vLLM reads the checkpoint's quantization_config
    if key in _FP8:
        return WeightFormat("fp8", "fp8", 8)  # quantized at load, per tensor
    if key in _BNB:
        return WeightFormat("int4", "bitsandbytes-nf4", 4)  # vLLM's in-flight bitsandbytes is 4-bit NF4
    if key in _PREQUANTIZED:
        return memory.quantize_format("awq" if "awq" in key else "gptq" if "gptq" in key else key, config)
    raise SizingError(
        gettext_noop("The planner does not know vLLM's quantization %(quantize)s."), "quantize", quantize=quantize
    )

"""What a vLLM release does with GPU memory, as numbers: its share of each GPU, its batch defaults, the KV bytes of
a token, and the console's estimates of what vLLM measures at start (activation peak, memory outside PyTorch).

deployments/sizing/vllm.py does the arithmetic of one spec with these; see it for the whole picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from deployments.sizing import memory
from deployments.sizing.params import Architecture, text_config

GIB = 2**30
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9  # what the console passes when a spec leaves it empty
DEFAULT_MAX_MODEL_LEN = 2048  # vLLM's fallback when config.json names no context length


@dataclass(frozen=True)
class Release:
    """How a vLLM release fills its share: the planner follows the pinned one (workers/jobs/flags/vllm.json)."""

    version: str
    block_size: int  # tokens per KV block on CUDA (CacheConfig.DEFAULT_BLOCK_SIZE)
    graphs_in_share: bool  # CUDA graphs taken from the share (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1)
    kept_free: bool  # the extensible KV cache keeps max(1 GiB, 0.75 x activation peak) of the device free
    null_block: bool  # the block pool holds one block back
    # `vllm serve` batch defaults (vllm/engine/arg_utils.py get_batch_defaults): (from this much CUDA memory,
    # max_num_batched_tokens, max_num_seqs), largest first; A100s stay on the small tier (2048, 256).
    batch_tiers: tuple[tuple[int, int, int], ...]


VLLM_0_34 = Release("0.34.0", 64, True, True, True, ((160 * GIB, 16384, 1024), (70 * GIB, 8192, 1024)))
VLLM_0_19 = Release("0.19.0", 16, False, False, False, ((70 * GIB, 8192, 1024),))  # for its logs in tests
PINNED = VLLM_0_34
SMALL_GPU_DEFAULTS = (2048, 256)
KEPT_FREE_FLOOR_BYTES = 1 * GIB  # KV_CACHE_MARGIN_FLOOR_BYTES on CUDA
KEPT_FREE_FRACTION = 0.75  # KV_CACHE_MARGIN_FRACTION

# --- What the console measured or fitted -------------------------------------------------------------------------
# CUDA's total (what vLLM multiplies) is NVML's total less what the driver keeps: the H200 of fixtures/nvml-h200.json
# reports 140.40 GiB total with these 0.60 GiB used while idle, and CUDA there reports 139.81 GiB.
DRIVER_RESERVED_BYTES = 644_939_776
# The forward pass of the profile run holds, per token, about 3 x intermediate/TP (gate/up output and the activated
# product) plus 3 x hidden (residual, input and output) activations in the model dtype: vLLM 0.6's logs of
# Llama 3.1 8B at 20,000 and 29,000 batched tokens (vllm-project/vllm#10517) give 110 KB a token, this gives 111.
FORWARD_INTERMEDIATE_TERMS = 3
FORWARD_HIDDEN_TERMS = 3
ACTIVATION_BYTES = 2
# The sampler's dummy batch: about 15 bytes a logit (fp32 logits, a sorted copy and int64 indices for top-k and
# top-p) over the whole vocabulary, fitted to vLLM 0.19 on an H100 with 1024 sequences: Llama 3.1 8B peaked at
# 1.89 GiB, Qwen2.5 7B at 2.21 GiB (tests/fixtures/vllm-kv). Dense models peak at the larger of the two phases;
# MoE models add the routed experts' buffers (top_k x (3 x expert width/TP + hidden) a token) to the sampler.
SAMPLER_BYTES_PER_LOGIT = 15
# Memory the profile run adds outside PyTorch, per GPU (vLLM 0.19, H100): 0.25 GiB on one GPU, 2.07 to 2.13 GiB
# with tensor parallelism (NCCL and custom all-reduce buffers).
NON_TORCH_BYTES_SINGLE = 270_000_000
NON_TORCH_BYTES_PARALLEL = 2_300_000_000
# CUDA graphs: 0.51 to 1.85 GiB, 1.03 on average, in the same vLLM 0.19 runs (0.84 GiB for Llama 3.1 8B).
CUDA_GRAPH_BYTES = 1_100_000_000


def cuda_total(gpu_total: int) -> int:
    """What CUDA (and so vLLM) calls a GPU's total memory, from the inventory's (NVML's) total."""
    return max(0, gpu_total - DRIVER_RESERVED_BYTES)


def share_bytes(gpu_total: int, utilization: float) -> int:
    """vLLM's share of one GPU: gpu_memory_utilization x its memory (rounded up, as vLLM does)."""
    return math.ceil(utilization * cuda_total(gpu_total))


def kept_free_bytes(activation: int, release: Release = PINNED) -> int:
    """What vLLM 0.34's extensible KV cache keeps free of the device beside the transient peak."""
    return max(KEPT_FREE_FLOOR_BYTES, int(KEPT_FREE_FRACTION * activation)) if release.kept_free else 0


def outside_bytes(release: Release = PINNED) -> int:
    """What a server holds beyond its share: its CUDA context, and its CUDA graphs where they are not inside."""
    return memory.CUDA_CONTEXT_BYTES + (0 if release.graphs_in_share else CUDA_GRAPH_BYTES)


def footprint(gpu_total: int, utilization: float, release: Release = PINNED) -> int:
    """What a vLLM server holds of one GPU at most: what placement reserves for it."""
    return share_bytes(gpu_total, utilization) + outside_bytes(release)


def batch_defaults(gpu_total: int, gpu_name: str = "", release: Release = PINNED) -> tuple[int, int]:
    """vLLM's (max_num_batched_tokens, max_num_seqs) for `vllm serve` on this GPU."""
    total = cuda_total(gpu_total)
    for least, tokens, seqs in release.batch_tiers:
        if total >= least and (least > 70 * GIB or "a100" not in gpu_name.lower()):
            return tokens, seqs
    return SMALL_GPU_DEFAULTS


def kv_bytes_per_token(arch: Architecture, kv_dtype: int, num_shard: int) -> int:
    """KV bytes a token takes on each GPU: 2 x layers x (KV heads / TP, at least 1) x head_dim x dtype bytes.
    MLA models (DeepSeek-V2/V3) cache the compressed latent, the same on every GPU."""
    if arch.is_mla:
        return arch.num_layers * (arch.kv_lora_rank + arch.qk_rope_head_dim) * kv_dtype
    heads = max(1, arch.num_kv_heads // num_shard)
    return 2 * arch.num_layers * heads * arch.head_dim * kv_dtype


def _moe(config: dict[str, Any]) -> tuple[int, int] | None:
    """(experts a token is routed to, expert width) of a mixture-of-experts model, else None."""
    config = text_config(config)
    experts = config.get("n_routed_experts") or config.get("num_local_experts") or config.get("num_experts")
    if not experts:
        return None
    width = config.get("moe_intermediate_size") or config.get("intermediate_size") or 0
    return int(config.get("num_experts_per_tok") or 2), int(width)


def activation_bytes(arch: Architecture, config: dict[str, Any], num_shard: int, tokens: int, seqs: int) -> int:
    """Estimated activation peak of vLLM's profile run on one GPU (see the constants above)."""
    h = arch.hidden_size
    sampler = SAMPLER_BYTES_PER_LOGIT * min(seqs, tokens) * arch.vocab_size + tokens * h * ACTIVATION_BYTES
    moe = _moe(config)
    if moe is not None:
        top_k, width = moe
        routed = tokens * top_k * (FORWARD_INTERMEDIATE_TERMS * width // num_shard + h) * ACTIVATION_BYTES
        return sampler + routed
    per_token = FORWARD_INTERMEDIATE_TERMS * arch.intermediate_size // num_shard + FORWARD_HIDDEN_TERMS * h
    return max(sampler, tokens * per_token * ACTIVATION_BYTES)


def non_torch_bytes(num_shard: int) -> int:
    """Memory the profile run adds outside PyTorch on each GPU."""
    return NON_TORCH_BYTES_SINGLE if num_shard == 1 else NON_TORCH_BYTES_PARALLEL

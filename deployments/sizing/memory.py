"""Bytes: weights per storage format, the KV cache as TGI allocates it, and the runtime overheads.

GB means 10^9 bytes throughout the planner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from deployments.sizing import compressed_tensors
from deployments.sizing.compressed_tensors import CompressedScheme
from deployments.sizing.errors import SizingError
from deployments.sizing.params import Architecture, ParamBreakdown

# --- Runtime overheads (named so the page can show where each number comes from) -----------------------------
# Measured on an H200 (torch 2.11, transformers 5.17): bf16 weights take 2.000 bytes/param.
BF16_BYTES_PER_PARAM = 2
# Same measurement: the CUDA context outside PyTorch's allocator took about 0.73 GB, once per GPU (per shard).
CUDA_CONTEXT_BYTES = 730_000_000
# Same measurement: a 4,096-token prefill of a 7B (hidden 4096) peaked 1.08 GB above the weights, 0.54 GB of it KV,
# so activations/workspace were about 0.54 GB. We scale that linearly with prefill tokens and hidden size: the
# activations of one prefill are (tokens x hidden)-shaped. This is a proportional estimate, not a measurement.
PREFILL_WORKSPACE_BYTES = 540_000_000
PREFILL_WORKSPACE_TOKENS = 4096
PREFILL_WORKSPACE_HIDDEN = 4096
# TGI's shard warmup keeps (1 - CUDA_MEMORY_FRACTION x TGI_WIGGLE_ROOM) x total free and gives the rest to KV
# (server/text_generation_server/models/flash_causal_lm.py, TGI_WIGGLE_ROOM default 0.90).
TGI_WIGGLE_ROOM = 0.90
# TGI launcher default for --max-batch-prefill-tokens when compute_optimal has no answer (launcher/src/main.rs).
DEFAULT_MAX_BATCH_PREFILL_TOKENS = 4096

# --- Weight storage assumptions --------------------------------------------------------------------------------
# AWQ/GPTQ/Marlin: group size 128 unless quantization_config says otherwise. Per group and output column: one fp16
# scale (2 bytes) and one packed zero point of `bits` bits, i.e. ~4.16 bits per weight at 4-bit/128.
DEFAULT_GROUP_SIZE = 128
GROUP_SCALE_BYTES = 2
# GPTQ checkpoints also store g_idx: one int32 per input feature of every quantized linear.
GPTQ_G_IDX_BYTES = 4
# bitsandbytes nf4/fp4: blocks of 64 weights; TGI builds Params4bit with compress_statistics=True (double quant), so
# each block's absmax is one byte plus one fp32 per 256 blocks.
BNB_4BIT_BLOCK = 64
BNB_4BIT_ABSMAX_BYTES = 1 + 4 / 256
# 8-bit formats (eetq, bitsandbytes int8, fp8): one scale per output channel, at most fp32.
INT8_SCALE_BYTES_PER_OUTPUT = 4
# Embeddings, lm_head, norms, biases and MoE routers stay 16-bit in weight-only quantized checkpoints.
DENSE_BYTES = 2

PRECISIONS = ("bf16", "fp16", "fp8", "int8", "int4", "fp32")
DEFAULT_PRECISIONS = ("bf16", "fp8", "int8", "int4")

# TGI --quantize values -> (precision, method).
TGI_QUANTIZE = {
    "awq": ("int4", "awq"),
    "gptq": ("int4", "gptq"),
    "marlin": ("int4", "marlin"),
    "exl2": ("int4", "exl2"),
    "compressed-tensors": ("int4", "compressed-tensors"),
    "bitsandbytes": ("int8", "bitsandbytes"),
    "bitsandbytes-nf4": ("int4", "bitsandbytes-nf4"),
    "bitsandbytes-fp4": ("int4", "bitsandbytes-fp4"),
    "eetq": ("int8", "eetq"),
    "fp8": ("fp8", "fp8"),
}
# Plain dtypes accepted where a quantize value is expected (they map to TGI's --dtype).
DTYPE_ALIASES = {
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "fp32": "fp32",
    "float32": "fp32",
}
# TGI spells fp8 KV caches fp8_e4m3fn/fp8_e5m2; vLLM's --kv-cache-dtype says fp8, fp8_e4m3, fp8_e5m2 or a 16-bit dtype.
KV_CACHE_DTYPES = {
    None: None,
    "": None,
    "auto": None,
    "fp8": 1,
    "fp8_e4m3fn": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "bf16": 2,
    "fp16": 2,
    "bfloat16": 2,
    "float16": 2,
}
SAFETENSORS_DTYPE_BYTES = {
    "F64": 8,
    "I64": 8,
    "U64": 8,
    "F32": 4,
    "I32": 4,
    "U32": 4,
    "F16": 2,
    "BF16": 2,
    "I16": 2,
    "U16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


@dataclass(frozen=True)
class WeightFormat:
    """How the weights are (or would be) stored on the GPU: precision class plus the quantization method."""

    precision: str
    method: str | None = None
    bits: float = 16
    group_size: int | None = None
    # A compressed-tensors checkpoint's own layout (None for every other format).
    scheme: CompressedScheme | None = None

    @property
    def label(self) -> str:
        """Plain words for tables and warnings, e.g. `4-bit AWQ`."""
        if self.method is None:
            return self.precision
        if self.method == "fp8":
            return "fp8"
        if self.method == "compressed-tensors" and self.precision in ("fp8", "bf16", "fp16"):
            return f"{self.precision} compressed-tensors"
        bits = f"{self.bits:g}-bit"
        names = {
            "bitsandbytes-nf4": "NF4",
            "bitsandbytes-fp4": "FP4",
            "bitsandbytes": "bitsandbytes",
            "eetq": "EETQ",
            "compressed-tensors": "compressed-tensors",
        }
        return f"{bits} {names.get(self.method, self.method.upper())}"

    @property
    def tgi_quantize(self) -> str | None:
        """The launcher's --quantize value for this format (None for plain 16-bit)."""
        if self.method in TGI_QUANTIZE:
            return self.method
        return None

    @property
    def shardable(self) -> bool:
        """TGI refuses to shard exl2 (`Sharding is currently not supported with exl2 quantization`)."""
        return self.method != "exl2"


def _config_group_size(qc: dict[str, Any]) -> Any:
    """group_size of an AWQ/GPTQ quantization_config, or of a compressed-tensors one's first weight group."""
    if qc.get("group_size"):
        return qc["group_size"]
    for group in (qc.get("config_groups") or {}).values():
        size = ((group or {}).get("weights") or {}).get("group_size")
        if size and int(size) > 0:
            return size
    return None


def precision_format(precision: str, quantization_config: dict[str, Any] | None = None) -> WeightFormat:
    """The representative format for a table row: int4 is AWQ, int8 is EETQ, fp8 is TGI's fp8."""
    if precision in ("bf16", "fp16"):
        return WeightFormat(precision)
    if precision == "fp32":
        return WeightFormat("fp32", bits=32)
    if precision == "fp8":
        return WeightFormat("fp8", "fp8", 8)
    if precision == "int8":
        return WeightFormat("int8", "eetq", 8)
    if precision == "int4":
        group = _config_group_size(quantization_config or {}) or DEFAULT_GROUP_SIZE
        return WeightFormat("int4", "awq", 4, int(group))
    raise SizingError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}", "precisions")


def _compressed_tensors_format(qc: dict[str, Any], torch_dtype: str) -> WeightFormat:
    """pack-quantized W4A16 is int4, float-quantized FP8 is fp8, int-quantized W8A8 is int8; the byte count comes
    from the scheme itself (deployments/sizing/compressed_tensors.py)."""
    scheme = compressed_tensors.parse_scheme(qc, torch_dtype)
    main = scheme.main
    if main is None:  # only a kv_cache_scheme: the weights stay 16-bit
        precision = "fp16" if torch_dtype == "float16" else "bf16"
        return WeightFormat(precision, "compressed-tensors", 16, scheme=scheme)
    if main.type == "float":
        precision = "fp8" if main.num_bits == 8 else "int4"
    else:
        precision = "int8" if main.num_bits == 8 else "int4"
    group = main.group_size if main.strategy == "group" and main.group_size and main.group_size > 0 else None
    return WeightFormat(precision, "compressed-tensors", main.num_bits, group, scheme)


def stored_format(config: dict[str, Any]) -> WeightFormat:
    """What a checkpoint is stored in: its quantization_config if any, else torch_dtype (fp32 is served as bf16)."""
    qc = config.get("quantization_config") or (config.get("text_config") or {}).get("quantization_config")
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    if not qc:
        return WeightFormat("fp16" if dtype == "float16" else "bf16")
    method = str(qc.get("quant_method") or "").lower()
    bits = qc.get("bits") or qc.get("w_bit") or 4
    group = qc.get("group_size") or qc.get("q_group_size") or DEFAULT_GROUP_SIZE
    if method in ("awq", "gptq", "marlin"):
        precision = "int8" if int(bits) == 8 else "int4"
        return WeightFormat(precision, method, int(bits), int(group))
    if method == "exl2":
        return WeightFormat("int4", "exl2", float(qc.get("bits") or 4.0))
    if method == "bitsandbytes":
        if qc.get("load_in_8bit"):
            return WeightFormat("int8", "bitsandbytes", 8)
        quant_type = str(qc.get("bnb_4bit_quant_type") or "nf4")
        return WeightFormat("int4", f"bitsandbytes-{quant_type}", 4)
    if method in ("fp8", "fbgemm_fp8"):
        return WeightFormat("fp8", "fp8", 8)
    if method == "compressed-tensors":
        return _compressed_tensors_format(qc, dtype)
    raise SizingError(f"quantization method {method!r} in quantization_config is not one TGI loads", "config")


def quantize_format(quantize: str, config: dict[str, Any]) -> WeightFormat:
    """The format TGI ends up with for `--quantize VALUE` (or a plain dtype) on this checkpoint."""
    key = quantize.strip().lower()
    if key in DTYPE_ALIASES:
        return precision_format(DTYPE_ALIASES[key])
    if key not in TGI_QUANTIZE:
        choices = ", ".join([*TGI_QUANTIZE, "bf16", "fp16"])
        raise SizingError(f"unknown quantize value {quantize!r}; TGI accepts {choices}", "quantize")
    stored = stored_format(config)
    if stored.method and (stored.method == key or key in ("marlin", "compressed-tensors")):
        return stored  # a pre-quantized checkpoint: its own bits and group size apply (Marlin repacks GPTQ/AWQ)
    precision, method = TGI_QUANTIZE[key]
    qc = config.get("quantization_config") or {}
    if method in ("awq", "gptq", "marlin"):
        bits = int(qc.get("bits") or 4)
        return WeightFormat("int8" if bits == 8 else "int4", method, bits, int(qc.get("group_size") or 128))
    if method == "exl2":
        return WeightFormat("int4", "exl2", float(qc.get("bits") or 4.0))
    return WeightFormat(precision, method, 4 if precision == "int4" else 8)


def _linear_bytes(breakdown: ParamBreakdown, fmt: WeightFormat) -> float:
    """Bytes of the quantized decoder linears, summed group by group (scales depend on each shape)."""
    total = 0.0
    for group in breakdown.linears:
        k, n, count = group.in_features, group.out_features, group.count
        if fmt.method in ("awq", "gptq", "marlin", "compressed-tensors") and fmt.precision in ("int4", "int8"):
            size = fmt.group_size or DEFAULT_GROUP_SIZE
            groups = 1 if size <= 0 else math.ceil(k / size)  # group_size -1 means one group per column
            per = k * n * fmt.bits / 8 + groups * n * (GROUP_SCALE_BYTES + fmt.bits / 8)
            if fmt.method == "gptq":
                per += k * GPTQ_G_IDX_BYTES
        elif fmt.method in ("bitsandbytes-nf4", "bitsandbytes-fp4"):
            per = k * n / 2 + math.ceil(k * n / BNB_4BIT_BLOCK) * BNB_4BIT_ABSMAX_BYTES
        elif fmt.method == "exl2":
            per = k * n * fmt.bits / 8
        else:  # 8-bit: eetq, bitsandbytes int8, fp8, compressed-tensors int8
            per = k * n + n * INT8_SCALE_BYTES_PER_OUTPUT
        total += per * count
    # Parameters seen in safetensors but not in the architecture count as linears of the same format.
    if breakdown.extra_linear:
        total += breakdown.extra_linear * _mean_linear_bytes_per_param(fmt)
    return total


def _mean_linear_bytes_per_param(fmt: WeightFormat) -> float:
    if fmt.method in ("awq", "gptq", "marlin", "compressed-tensors") and fmt.precision in ("int4", "int8"):
        return fmt.bits / 8 + (GROUP_SCALE_BYTES + fmt.bits / 8) / (fmt.group_size or DEFAULT_GROUP_SIZE)
    if fmt.method in ("bitsandbytes-nf4", "bitsandbytes-fp4"):
        return 0.5 + BNB_4BIT_ABSMAX_BYTES / BNB_4BIT_BLOCK
    if fmt.method == "exl2":
        return fmt.bits / 8
    return 1.0


def weight_bytes(breakdown: ParamBreakdown, fmt: WeightFormat) -> int:
    """Bytes the weights take in this format (bf16/fp16: 2 per param; quantized: see the constants above)."""
    if fmt.method is None:
        per_param = 4 if fmt.precision == "fp32" else BF16_BYTES_PER_PARAM
        return breakdown.total * per_param
    if fmt.scheme is not None:
        return compressed_tensors.weight_bytes(breakdown, fmt.scheme)
    return round(_linear_bytes(breakdown, fmt) + breakdown.dense_params * DENSE_BYTES)


def kv_dtype_bytes(kv_cache_dtype: str | None) -> int:
    """Bytes per cached element: fp8 KV is 1; the default follows the model dtype, which TGI runs in 16-bit."""
    key = kv_cache_dtype.strip().lower() if isinstance(kv_cache_dtype, str) else kv_cache_dtype
    if key not in KV_CACHE_DTYPES:
        raise SizingError(
            f"unknown kv_cache_dtype {kv_cache_dtype!r}; TGI accepts fp8_e4m3fn or fp8_e5m2", "kv_cache_dtype"
        )
    return KV_CACHE_DTYPES[key] or 2


def kv_bytes_per_token(arch: Architecture, dtype_bytes: int = 2) -> int:
    """KV bytes per token as TGI allocates it: 2 (K and V) x layers x kv_heads x head_dim x bytes.

    For DeepSeek-V2/V3 TGI caches full K and V for every attention head, padded to
    max(qk_nope + qk_rope, v_head_dim), not the compressed latent.
    """
    return 2 * arch.num_layers * arch.num_kv_heads * arch.kv_head_dim * dtype_bytes


def kv_bytes_per_token_latent(arch: Architecture, dtype_bytes: int = 2) -> int | None:
    """What an MLA-aware engine would cache (kv_lora_rank + rope dims per layer); None when not MLA."""
    if not arch.is_mla:
        return None
    return arch.num_layers * (arch.kv_lora_rank + arch.qk_rope_head_dim) * dtype_bytes


def prefill_workspace_bytes(prefill_tokens: int, hidden_size: int) -> int:
    """Activation/workspace peak of one prefill, scaled from the 7B measurement (see PREFILL_WORKSPACE_BYTES)."""
    scale = (prefill_tokens / PREFILL_WORKSPACE_TOKENS) * (hidden_size / PREFILL_WORKSPACE_HIDDEN)
    return round(PREFILL_WORKSPACE_BYTES * scale)


def stored_bytes(safetensors_params: dict[str, int]) -> int:
    """Exact bytes of the tensors a safetensors checkpoint holds, from its per-dtype element counts."""
    return sum(count * SAFETENSORS_DTYPE_BYTES.get(dtype.upper(), 2) for dtype, count in safetensors_params.items())

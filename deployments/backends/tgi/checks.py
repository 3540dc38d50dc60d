"""The checks TGI contributes to cleaning a spec: each small, each naming the field at fault (SpecError).

`values` are the spec's cleaned values; `checkpoint` says what the model's files are ({"quantization": "awq"}).
"""

from __future__ import annotations

from typing import Any

from deployments.backends.base import SpecError
from deployments.backends.tgi.launch import ALLOWED_ENV, QUIET_LOG_LEVELS, log_level_refused

PRE_QUANTIZED = {"awq", "gptq", "marlin", "compressed-tensors"}
# Checkpoints launched with --quantize naming their own format when the spec names none (TGI would also read it from
# config.json; naming it puts it in the command the user reviews). llm-compressor's output is one.
NAMED_FROM_CHECKPOINT = {"compressed-tensors"}
# TGI: --dtype cannot be combined with --quantize, except the bitsandbytes variants.
DTYPE_WITH_QUANTIZE = {"bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4"}


def quantization_matches_checkpoint(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """Pre-quantized methods need a checkpoint quantized that way; on-the-fly methods need an unquantized one."""
    quantize, stored = values["quantize"], checkpoint.get("quantization")
    marlin_of_stored = quantize == "marlin" and stored in ("gptq", "awq")
    if quantize in PRE_QUANTIZED and stored != quantize and not marlin_of_stored:
        raise SpecError(
            f"{quantize} needs a checkpoint quantized with {quantize}; this one is "
            f"{stored or 'not quantized'}. Pick a pre-quantized repo, or an on-the-fly method (bitsandbytes, eetq, "
            "fp8).",
            field="quantize",
        )
    if quantize and quantize not in PRE_QUANTIZED and stored:
        raise SpecError(
            f"The checkpoint is already quantized ({stored}); leave quantization empty or choose {stored}.",
            field="quantize",
        )


def quantize_from_checkpoint(values: dict[str, Any], checkpoint: dict[str, Any]) -> str:
    """`compressed-tensors` for such a checkpoint when the spec leaves quantization empty. Not with a dtype: TGI
    refuses --dtype beside --quantize, and takes it beside a format it read from config.json itself."""
    stored = checkpoint.get("quantization")
    if values["quantize"] or values["dtype"] or stored not in NAMED_FROM_CHECKPOINT:
        return values["quantize"]
    return stored


def _tgi_loads_group(fmt: str, group: dict[str, Any]) -> bool:
    """TGI 3.3's compressed-tensors loader (server/text_generation_server/layers/compressed_tensors/loader.py) takes
    the config's top-level format: FP8 float- or naive-quantized (not in blocks), INT4/INT8 pack-quantized
    (GPTQ-Marlin kernels) or marlin-24, INT8 int- or naive-quantized (W8A8). Anything else stops the shard
    ("unsupported compressed-tensors configuration")."""
    weights = group.get("weights") or {}
    kind, bits = weights.get("type", "int"), weights.get("num_bits")
    if fmt in ("float-quantized", "naive-quantized") and kind == "float" and bits == 8:
        # Its FP8 loader reads per-tensor or per-channel scales; 2-D block scales (FP8_BLOCK) it does not.
        return weights.get("strategy") != "block"
    if fmt in ("pack-quantized", "marlin-24") and kind == "int" and bits in (4, 8):
        return True
    return fmt in ("int-quantized", "naive-quantized") and kind == "int" and bits == 8


def compressed_tensors_format_loadable(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """NVFP4, MXFP4, mixed-precision and other compressed-tensors checkpoints TGI 3.3 cannot load: vLLM can."""
    if checkpoint.get("quantization") != "compressed-tensors":
        return
    config = (checkpoint.get("config") or {}).get("quantization_config") or {}
    fmt = str(config.get("format") or "dense")
    groups = [group or {} for group in (config.get("config_groups") or {}).values()]
    refused = [group for group in groups if group.get("weights") and not _tgi_loads_group(fmt, group)]
    if refused:
        raise SpecError(
            f"TGI cannot load this compressed-tensors checkpoint ({fmt}): it loads FP8 (per tensor or channel), INT8 "
            "and 4- or 8-bit integer weights in one format. Serve it with vLLM.",
            field="backend",
        )


def dtype_with_quantize(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    if values["dtype"] and values["quantize"] and values["quantize"] not in DTYPE_WITH_QUANTIZE:
        raise SpecError(
            "TGI cannot combine a dtype with this quantization (only the bitsandbytes variants take both); "
            "leave dtype empty.",
            field="dtype",
        )


def token_limits(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """The router's own argument checks, before a launch rather than after it."""
    low, high = values.get("max_input_tokens"), values.get("max_total_tokens")
    if low and high and low >= high:
        raise SpecError(
            f"Max input tokens ({low}) must be less than max total tokens ({high}).", field="max_input_tokens"
        )
    prefill = values.get("max_batch_prefill_tokens")
    if prefill and low and prefill < low:
        raise SpecError(
            f"Max batch prefill tokens ({prefill}) must be at least max input tokens ({low}).",
            field="max_batch_prefill_tokens",
        )


def memory_fraction(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    if not 0.05 <= float(values["cuda_memory_fraction"]) <= 1.0:
        raise SpecError("The CUDA memory fraction is between 0.05 and 1.", field="cuda_memory_fraction")


def environment_allowed(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """TGI reads generic names (PORT, HOSTNAME, API_KEY, MODEL_ID): only allow-listed variables pass."""
    if not isinstance(values["extra_env"], dict):
        raise SpecError('Extra environment is an object: {"NAME": "value"}.', field="extra_env")
    refused = sorted(set(values["extra_env"]) - ALLOWED_ENV)
    if refused:
        raise SpecError(
            f"Not allowed: {', '.join(refused)}. Allowed: {', '.join(sorted(ALLOWED_ENV))}.", field="extra_env"
        )


def log_level_keeps_requests_out(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """At debug or trace TGI logs every prompt and output into the server log, which more people read than may
    read prompts: LOG_LEVEL stays at info or quieter, for every target."""
    value = values["extra_env"].get("LOG_LEVEL")
    if value is not None and log_level_refused(value):
        raise SpecError(
            f"LOG_LEVEL={value} makes the server log prompts and outputs. Use one of "
            f"{', '.join(sorted(QUIET_LOG_LEVELS))}, for every target (e.g. warn,text_generation_router=info).",
            field="extra_env",
        )


CHECKS = (
    quantization_matches_checkpoint,
    compressed_tensors_format_loadable,
    dtype_with_quantize,
    token_limits,
    memory_fraction,
    environment_allowed,
    log_level_keeps_requests_out,
)

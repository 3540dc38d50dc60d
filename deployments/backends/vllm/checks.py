"""The checks vLLM contributes to cleaning a spec: each small, each naming the field at fault (SpecError), each the
refusal vLLM 0.34 would print at start, said before a launch.

`values` are the spec's cleaned values; `checkpoint` says what the model's files are: {"quantization": "awq",
"config": {...}} (config.json's text part; empty when the files are not here yet).
"""

from __future__ import annotations

from typing import Any

from deployments.backends.base import SpecError
from deployments.backends.vllm.launch import (
    ALLOWED_ENV,
    KV_CACHE_DTYPES,
    QUANTIZATIONS,
    QUIET_LOG_LEVELS,
    RELEASE,
    log_level_refused,
)

PRE_QUANTIZED = {"awq", "gptq", "compressed-tensors"}
# config.json's names for the model's context length; vLLM takes the smallest it finds (_get_and_verify_max_len).
CONTEXT_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)


def quantization_known(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """TGI's own methods (bitsandbytes, EETQ, Marlin) are not vLLM's."""
    quantize = values["quantize"]
    if quantize and quantize not in QUANTIZATIONS:
        hint = (
            "vLLM picks Marlin kernels itself for AWQ and GPTQ checkpoints: choose awq or gptq."
            if quantize == "marlin"
            else "For on-the-fly quantization on vLLM choose fp8."
        )
        raise SpecError(
            f"vLLM {RELEASE} has no {quantize} quantization. {hint} vLLM's methods here: "
            f"{', '.join(sorted(QUANTIZATIONS))}.",
            field="quantize",
        )


def quantization_matches_checkpoint(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """vLLM refuses a --quantization that differs from the checkpoint's own (and needs a quantized checkpoint for
    the pre-quantized methods); fp8 quantizes an unquantized checkpoint at load."""
    quantize, stored = values["quantize"], checkpoint.get("quantization")
    if quantize in PRE_QUANTIZED and stored != quantize:
        raise SpecError(
            f"{quantize} needs a checkpoint quantized with {quantize}; this one is {stored or 'not quantized'}. "
            "Pick a pre-quantized repo, or fp8 (quantized at load).",
            field="quantize",
        )
    if quantize and stored and quantize != stored:
        raise SpecError(
            f"The checkpoint is already quantized ({stored}); leave quantization empty (vLLM reads it from the "
            "checkpoint) or choose it.",
            field="quantize",
        )


def kv_cache_dtype_known(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    if values["kv_cache_dtype"] and values["kv_cache_dtype"] not in KV_CACHE_DTYPES:
        raise SpecError(
            f"vLLM has no KV cache dtype {values['kv_cache_dtype']}; choose one of "
            f"{', '.join(sorted(KV_CACHE_DTYPES))}.",
            field="kv_cache_dtype",
        )


def memory_utilization(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    share = values.get("gpu_memory_utilization")
    if share is not None and not 0.05 <= float(share) <= 1.0:
        raise SpecError(
            "GPU memory utilization is a share of each GPU, between 0.05 and 1.", field="gpu_memory_utilization"
        )


def batch_limits(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """vLLM's scheduler check: a batch holds at least one token of every sequence it runs."""
    tokens, seqs = values.get("max_num_batched_tokens"), values.get("max_num_seqs")
    if tokens and seqs and tokens < seqs:
        raise SpecError(
            f"Max batched tokens ({tokens}) must be at least max sequences per batch ({seqs}).",
            field="max_num_batched_tokens",
        )


def tensor_parallel_divides_heads(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """vLLM splits attention heads evenly over the GPUs of a tensor-parallel group."""
    size = values.get("num_shard") or len(values.get("gpu_indexes") or [])
    config = checkpoint.get("config") or {}
    heads = config.get("num_attention_heads")
    if values.get("device") == "cpu" or not size or size == 1 or not isinstance(heads, int):
        return
    if heads % size:
        raise SpecError(
            f"The model has {heads} attention heads, which {size} GPUs cannot share evenly (vLLM: tensor parallel "
            f"size must divide them). Choose {_divisors(heads, size)}.",
            field="num_shard" if values.get("num_shard") else "gpu_indexes",
        )


def model_length_fits(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    """vLLM refuses a max model length past the model's own unless VLLM_ALLOW_LONG_MAX_MODEL_LEN=1."""
    wanted, config = values.get("max_model_len"), checkpoint.get("config") or {}
    if not wanted or config.get("rope_scaling") or str(values["extra_env"].get("VLLM_ALLOW_LONG_MAX_MODEL_LEN")) == "1":
        return  # rope scaling stretches the length in ways vLLM computes itself
    lengths = [config[key] for key in CONTEXT_KEYS if isinstance(config.get(key), int) and config[key] > 0]
    if lengths and wanted > min(lengths):
        raise SpecError(
            f"Max model length {wanted} is longer than the model's context ({min(lengths)} tokens); vLLM refuses it. "
            "Leave it empty for the model's own.",
            field="max_model_len",
        )


def environment_allowed(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    if not isinstance(values["extra_env"], dict):
        raise SpecError('Extra environment is an object: {"NAME": "value"}.', field="extra_env")
    refused = sorted(set(values["extra_env"]) - ALLOWED_ENV)
    if refused:
        raise SpecError(
            f"Not allowed: {', '.join(refused)}. Allowed: {', '.join(sorted(ALLOWED_ENV))}.", field="extra_env"
        )


def log_level_keeps_requests_out(values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
    value = values["extra_env"].get("VLLM_LOGGING_LEVEL")
    if value is not None and log_level_refused(value):
        raise SpecError(
            f"VLLM_LOGGING_LEVEL={value} makes the server log what requests send. Use one of "
            f"{', '.join(sorted(QUIET_LOG_LEVELS))}.",
            field="extra_env",
        )


def _divisors(heads: int, size: int) -> str:
    sizes = [n for n in (1, 2, 4, 8, 16) if heads % n == 0 and n != size]
    return ", ".join(map(str, sizes)) + " GPUs"


CHECKS = (
    quantization_known,
    quantization_matches_checkpoint,
    kv_cache_dtype_known,
    memory_utilization,
    batch_limits,
    tensor_parallel_divides_heads,
    model_length_fits,
    environment_allowed,
    log_level_keeps_requests_out,
)

"""The llm-compressor recipe of a quantization spec, as the plain dict its YAML is written from. Standard library
only, so the console can show the recipe a job will run; the program dumps it to YAML and passes that text to
`llmcompressor.oneshot`, and reports it verbatim."""

from __future__ import annotations

from typing import Any

from workers.jobs.quantize_spec import QuantizeSpec

# An FP8 KV cache: one static scale per tensor, calibrated (what vLLM's --kv-cache-dtype fp8 reads).
KV_CACHE_FP8 = {"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True}


def _int4_weights(group_size: int, *, symmetric: bool) -> dict[str, Any]:
    weights: dict[str, Any] = {"num_bits": 4, "type": "int", "symmetric": symmetric}
    if group_size > 0:
        weights |= {"strategy": "group", "group_size": group_size}
    else:
        weights["strategy"] = "channel"
    return weights


def _int4_groups(group_size: int, *, symmetric: bool = True) -> dict[str, Any]:
    return {"group_0": {"targets": ["Linear"], "weights": _int4_weights(group_size, symmetric=symmetric)}}


def recipe(spec: QuantizeSpec) -> dict[str, Any]:
    """{"quant_stage": {"quant_modifiers": {ModifierName: arguments, ...}}}, modifiers in the order they run."""
    ignore = list(spec.ignore)
    modifiers: dict[str, dict[str, Any]] = {}
    if spec.scheme == "W4A16_GPTQ":
        modifiers["GPTQModifier"] = {"ignore": ignore, "config_groups": _int4_groups(spec.group_size)}
    elif spec.scheme == "W4A16_AWQ":
        # AWQ only rescales; the QuantizationModifier after it rounds (asymmetric, as AWQ's W4A16_ASYM preset).
        modifiers["AWQModifier"] = {"duo_scaling": True}
        modifiers["QuantizationModifier"] = {
            "ignore": ignore,
            "config_groups": _int4_groups(spec.group_size, symmetric=False),
        }
    elif spec.scheme == "W4A16_RTN":
        modifiers["QuantizationModifier"] = {"ignore": ignore, "config_groups": _int4_groups(spec.group_size)}
    elif spec.scheme == "FP8_DYNAMIC":
        modifiers["QuantizationModifier"] = {"targets": ["Linear"], "ignore": ignore, "scheme": "FP8_DYNAMIC"}
    elif spec.scheme == "W8A8_INT8":
        modifiers["SmoothQuantModifier"] = {"smoothing_strength": 0.8}
        modifiers["GPTQModifier"] = {"targets": ["Linear"], "ignore": ignore, "scheme": "W8A8"}
    else:  # parse_spec admits only SCHEMES
        raise ValueError(f"no recipe for scheme {spec.scheme}")
    if spec.kv_cache_fp8:
        modifiers[list(modifiers)[-1]]["kv_cache_scheme"] = dict(KV_CACHE_FP8)
    return {"quant_stage": {"quant_modifiers": modifiers}}

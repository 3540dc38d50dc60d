"""The quantize job's spec (workers/jobs/quantize_spec.py) and recipe (quantize_recipe.py) in the console's
environment (standard library only): defaults, a wrong field named in the error, the schemes that need CUDA, an
already-quantized source, and the shipped calibration sample."""

from __future__ import annotations

import pytest

from workers.jobs.finetune_data import scan_dataset
from workers.jobs.protocol import BadInput
from workers.jobs.quantize_recipe import recipe
from workers.jobs.quantize_spec import (
    DEFAULT_CALIBRATION,
    SCHEMES,
    calibration_path,
    calibration_rows_needed,
    check_source_config,
    group_size_problem,
    parse_spec,
    source_quantization,
)

BASE = {"source_model": "/models/a", "output_dir": "/jobs/q-1/model", "scheme": "W4A16_GPTQ"}


def spec(**change):
    return parse_spec({**BASE, **change})


def refused(**change) -> BadInput:
    with pytest.raises(BadInput) as caught:
        spec(**change)
    return caught.value


def test_defaults_fill_in_and_the_spec_round_trips():
    parsed = spec()
    assert (parsed.group_size, parsed.ignore, parsed.kv_cache_fp8, parsed.device, parsed.seed) == (
        128,
        ("lm_head",),
        False,
        "cpu",
        0,
    )
    assert (parsed.calibration.path, parsed.calibration.samples, parsed.calibration.seq_len) == (None, 64, 512)
    assert calibration_path(parsed) == DEFAULT_CALIBRATION
    assert parse_spec(parsed.to_dict()) == parsed
    # 8-bit schemes have no groups: the form's group size is checked, then not carried.
    assert spec(scheme="FP8_DYNAMIC", group_size=64).group_size is None


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"bits": 4}, "bits", "Unknown spec field"),
        ({"scheme": "GGUF_Q4"}, "scheme", "W4A16_GPTQ, W4A16_AWQ, W4A16_RTN, FP8_DYNAMIC, W8A8_INT8"),
        ({"scheme": None}, "scheme", "scheme is required"),
        ({"source_model": ""}, "source_model", "required"),
        ({"group_size": 100}, "group_size", "32, 64, 128, or -1"),
        ({"group_size": True}, "group_size", "32, 64, 128, or -1"),
        ({"ignore": "lm_head"}, "ignore", "list of module names"),
        ({"device": "tpu"}, "device", "cpu, cuda"),
        ({"calibration": {"samples": 0}}, "calibration.samples", "1 to 4096"),
        ({"calibration": {"seq_len": 8}}, "calibration.seq_len", "16 to 16384"),
        ({"calibration": {"rows": 8}}, "calibration.rows", "Unknown calibration field"),
        ({"calibration": {"path": ""}}, "calibration.path", "JSONL file"),
        ({"seed": -1}, "seed", "whole number"),
        ({"kv_cache_fp8": "yes"}, "kv_cache_fp8", "true or false"),
        ({"scheme": "W4A16_AWQ", "device": "cuda", "kv_cache_fp8": True}, "kv_cache_fp8", "W4A16_GPTQ"),
    ],
)
def test_a_wrong_field_is_named(change, field, words):
    error = refused(**change)
    assert error.field == field and words in error.message, error.message


def test_a_scheme_that_needs_cuda_is_refused_on_cpu_with_the_reason():
    cuda_only = [name for name, scheme in SCHEMES.items() if scheme.cuda_only_reason]
    assert cuda_only == ["W4A16_AWQ"]  # measured with llm-compressor 0.14 on torch's CPU build
    error = refused(scheme="W4A16_AWQ")
    assert error.field == "scheme" and "page-locked memory" in error.message and "GPU" in error.next_step
    assert spec(scheme="W4A16_AWQ", device="cuda").scheme == "W4A16_AWQ"


def test_calibration_rows_are_needed_only_where_the_run_calibrates():
    assert calibration_rows_needed(spec(calibration={"samples": 16})) == 16
    assert calibration_rows_needed(spec(scheme="W4A16_RTN")) == 0
    assert calibration_rows_needed(spec(scheme="FP8_DYNAMIC")) == 0
    # An FP8 KV cache needs its scales measured, so it calibrates even a weight-only RTN run.
    assert calibration_rows_needed(spec(scheme="W4A16_RTN", kv_cache_fp8=True)) == 64


@pytest.mark.parametrize(
    ("config", "method"),
    [
        ({"model_type": "llama"}, None),
        ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "gptq"),
        (
            {"quantization_config": {"quant_method": "compressed-tensors", "format": "pack-quantized"}},
            "compressed-tensors",
        ),
        ({"quantization_config": {"format": "float-quantized", "config_groups": {}}}, "compressed-tensors"),
        ({"quantization_config": {"load_in_4bit": True}}, "bitsandbytes"),
        ({"compression_config": {"quantization_config": {}}}, "compressed-tensors"),
    ],
)
def test_an_already_quantized_source_is_recognised_and_refused(config, method):
    assert source_quantization(config) == method
    if method is None:
        check_source_config(config)
        return
    with pytest.raises(BadInput) as caught:
        check_source_config(config)
    assert caught.value.field == "source_model" and method in caught.value.message


def test_a_group_size_must_divide_every_layer_width():
    tiny = {"hidden_size": 64, "intermediate_size": 176, "num_attention_heads": 4, "head_dim": 16}
    assert "intermediate_size (176)" in group_size_problem(tiny, 32)
    assert "hidden_size (64)" in group_size_problem(tiny, 128)
    assert group_size_problem(tiny, -1) is None
    assert group_size_problem({"hidden_size": 4096, "intermediate_size": 11008}, 128) is None


def test_recipes_name_the_modifiers_of_each_scheme():
    def modifiers(**change):
        return recipe(spec(**change))["quant_stage"]["quant_modifiers"]

    gptq = modifiers(group_size=-1)
    assert list(gptq) == ["GPTQModifier"] and gptq["GPTQModifier"]["ignore"] == ["lm_head"]
    assert gptq["GPTQModifier"]["config_groups"]["group_0"]["weights"] == {
        "num_bits": 4,
        "type": "int",
        "symmetric": True,
        "strategy": "channel",
    }
    assert modifiers()["GPTQModifier"]["config_groups"]["group_0"]["weights"]["group_size"] == 128
    assert list(modifiers(scheme="W4A16_RTN")) == ["QuantizationModifier"]
    assert list(modifiers(scheme="W4A16_AWQ", device="cuda")) == ["AWQModifier", "QuantizationModifier"]
    assert modifiers(scheme="FP8_DYNAMIC")["QuantizationModifier"]["scheme"] == "FP8_DYNAMIC"
    w8a8 = modifiers(scheme="W8A8_INT8", kv_cache_fp8=True)
    assert list(w8a8) == ["SmoothQuantModifier", "GPTQModifier"] and w8a8["GPTQModifier"]["scheme"] == "W8A8"
    assert w8a8["GPTQModifier"]["kv_cache_scheme"]["type"] == "float"


def test_the_shipped_calibration_sample_is_small_valid_text():
    scan = scan_dataset(DEFAULT_CALIBRATION)
    assert scan.shape == "text" and scan.rows >= 256 and scan.bytes < 200_000

"""The VRAM planner on compressed-tensors checkpoints (llm-compressor's output): weight bytes from config.json's
quantization_config against a tensor-by-tensor count, and against checkpoints llm-compressor really wrote."""

from __future__ import annotations

import json
import math
import re

import pytest

from deployments.sizing import (
    GB,
    ModelMetadata,
    count_parameters,
    load_model_metadata,
    size_model,
    stored_format,
    uniform_gpus,
    weight_bytes,
)
from deployments.sizing.memory import kv_bytes_per_token
from deployments.sizing.params import parse_architecture
from deployments.sizing.vllm import VllmLimits
from tests.support.fixtures import FIXTURES

CHECKPOINTS = FIXTURES / "compressed-tensors"
# A made-up Llama small enough to count by hand, with widths that 64 and 128 divide.
LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 256,
    "intermediate_size": 640,
    "num_hidden_layers": 3,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "vocab_size": 512,
    "tie_word_embeddings": False,
    "max_position_embeddings": 4096,
    "torch_dtype": "bfloat16",
}
GPU = uniform_gpus(1, 80 * GB, "NVIDIA H100")
BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "F8_E4M3": 1}
FP4 = ("nvfp4-pack-quantized", "mxfp4-pack-quantized")


def weights(**args) -> dict:
    return {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 128} | args


def quantization_config(fmt: str, weight_args: dict, ignore=("lm_head",), activations=None, kv=None) -> dict:
    """A quantization_config as compressed-tensors 0.19 writes it (tests/fixtures/compressed-tensors)."""
    group = {"targets": ["Linear"], "weights": weight_args, "input_activations": activations, "format": fmt}
    return {
        "quant_method": "compressed-tensors",
        "format": fmt,
        "config_groups": {"group_0": group},
        "ignore": list(ignore),
        "kv_cache_scheme": kv,
        "quantization_status": "compressed",
    }


def llama_modules(cfg: dict) -> tuple[dict, dict]:
    """Linear modules {name: (out, in)} and other tensors {name: shape} of a Llama, named as transformers does."""
    h, inter, kv = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_key_value_heads"] * 32
    linears, other = {"lm_head": (cfg["vocab_size"], h)}, {"model.embed_tokens.weight": [cfg["vocab_size"], h]}
    other["model.norm.weight"] = [h]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes = {"q_proj": (h, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, h)}
        linears |= {f"{p}self_attn.{name}": shape for name, shape in shapes.items()}
        linears |= {f"{p}mlp.gate_proj": (inter, h), f"{p}mlp.up_proj": (inter, h), f"{p}mlp.down_proj": (h, inter)}
        other |= {f"{p}input_layernorm.weight": [h], f"{p}post_attention_layernorm.weight": [h]}
    return linears, other


def checkpoint_tensors(cfg: dict) -> dict[str, tuple[str, list[int]]]:
    """Every tensor the checkpoint holds, written from compressed-tensors' compressors (pack_quantized, naive_
    quantized) and lifecycle/initialize.py, independently of the planner: {name: (dtype, shape)}."""
    qc, dense = cfg["quantization_config"], "BF16"
    linears, other = llama_modules(cfg)
    tensors = {name: (dense, shape) for name, shape in other.items()}
    for name, (n, k) in linears.items():
        ignored = any(re.match(e[3:], name) if e.startswith("re:") else e == name for e in qc["ignore"])
        # A group naming the module (by a `re:` pattern here) wins over one targeting every Linear.
        named = [
            g
            for g in qc["config_groups"].values()
            if any(re.match(t[3:], name) for t in g["targets"] if t[:3] == "re:")
        ]
        group = named[0] if named else qc["config_groups"]["group_0"]
        if ignored:
            tensors[f"{name}.weight"] = (dense, [n, k])
            continue
        w, act = group["weights"], group["input_activations"]
        if group["format"] in FP4:  # two 4-bit floats per byte; one-byte scales (NVFP4: fp8, plus a global one)
            nvfp4 = group["format"] == FP4[0]
            tensors[f"{name}.weight_packed"] = ("U8", [n, math.ceil(k / 2)])
            tensors[f"{name}.weight_scale"] = ("F8_E4M3" if nvfp4 else "U8", [n, math.ceil(k / w["group_size"])])
            if nvfp4:
                tensors[f"{name}.weight_global_scale"] = ("F32", [1])
            continue
        if w["strategy"] == "group":
            scale = [n, math.ceil(k / w["group_size"])]
        elif w["strategy"] == "block":
            scale = [math.ceil(n / w["block_structure"][0]), math.ceil(k / w["block_structure"][1])]
        elif w["strategy"] == "channel":
            scale = [n, 1]
        else:
            scale = [1]
        tensors[f"{name}.weight_scale"] = (dense, scale)
        if group["format"] == "pack-quantized":
            tensors[f"{name}.weight_packed"] = ("I32", [n, math.ceil(k * w["num_bits"] / 32)])
            tensors[f"{name}.weight_shape"] = ("I64", [2])
            if not w["symmetric"]:
                tensors[f"{name}.weight_zero_point"] = ("I32", [math.ceil(n * w["num_bits"] / 32), scale[1]])
        else:
            tensors[f"{name}.weight"] = ("F8_E4M3" if w["type"] == "float" else "I8", [n, k])
            if not w["symmetric"]:
                tensors[f"{name}.weight_zero_point"] = ("I8", scale)
        if act and not act.get("dynamic"):
            tensors[f"{name}.input_scale"] = (dense, [1])
    if qc.get("kv_cache_scheme"):
        for i in range(cfg["num_hidden_layers"]):
            tensors[f"model.layers.{i}.self_attn.k_scale"] = (dense, [1])
            tensors[f"model.layers.{i}.self_attn.v_scale"] = (dense, [1])
    return tensors


def tensor_bytes(tensors: dict[str, tuple[str, list[int]]]) -> int:
    return sum(BYTES[dtype] * math.prod(shape) for dtype, shape in tensors.values())


def header_total(header: dict) -> int:
    """What a safetensors file's tensors take: the end of the last tensor's data."""
    return max(info["data_offsets"][1] for name, info in header.items() if name != "__metadata__")


CASES = {
    "w4a16 group 128": quantization_config("pack-quantized", weights()),
    "w4a16 group 64 asymmetric, some modules ignored": quantization_config(
        "pack-quantized",
        weights(group_size=64, symmetric=False),
        ignore=("lm_head", "re:.*down_proj$", "model.layers.1.self_attn.o_proj"),
    ),
    "w4a16 channel, lm_head quantized too, fp8 kv cache": quantization_config(
        "pack-quantized",
        weights(strategy="channel", group_size=None),
        ignore=(),
        kv={"num_bits": 8, "type": "float", "strategy": "tensor", "dynamic": False, "symmetric": True},
    ),
    "fp8 dynamic": quantization_config(
        "float-quantized",
        weights(num_bits=8, type="float", strategy="channel", group_size=None),
        activations={"num_bits": 8, "type": "float", "strategy": "token", "dynamic": True},
    ),
    "fp8 block 128x128": quantization_config(
        "float-quantized",
        weights(num_bits=8, type="float", strategy="block", group_size=None, block_structure=[128, 128]),
        ignore=("re:.*lm_head",),
        activations={"num_bits": 8, "type": "float", "strategy": "group", "group_size": 128, "dynamic": True},
    ),
    "nvfp4a16": quantization_config(
        "nvfp4-pack-quantized",
        weights(type="float", strategy="tensor_group", group_size=16, scale_dtype="torch.float8_e4m3fn"),
        ignore=("lm_head", "re:.*down_proj$"),
    ),
    "mxfp4a16": quantization_config(
        "mxfp4-pack-quantized", weights(type="float", group_size=32, scale_dtype="torch.uint8")
    ),
    "mixed: w8a8 int8 attention, w4a16 elsewhere": quantization_config("pack-quantized", weights())
    | {
        "format": "mixed-precision",
        "config_groups": {
            "group_0": {
                "targets": ["Linear"],
                "weights": weights(),
                "input_activations": None,
                "format": "pack-quantized",
            },
            "group_1": {
                "targets": ["re:.*self_attn\\.(q|k|v|o)_proj$"],
                "weights": weights(num_bits=8, strategy="channel", group_size=None),
                "input_activations": {"num_bits": 8, "type": "int", "strategy": "token", "dynamic": True},
                "format": "int-quantized",
            },
        },
    },
    "w8a8 int8, static per-tensor activations": quantization_config(
        "int-quantized",
        weights(num_bits=8, strategy="channel", group_size=None),
        activations={"num_bits": 8, "type": "int", "strategy": "tensor", "dynamic": False, "symmetric": True},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_weight_bytes_equal_a_tensor_by_tensor_count(case):
    cfg = LLAMA | {"quantization_config": CASES[case]}
    expected = tensor_bytes(checkpoint_tensors(cfg))
    assert weight_bytes(count_parameters(cfg), stored_format(cfg)) == expected
    # Without safetensors headers the report plans from config.json alone, and says the same.
    assert size_model(ModelMetadata(config=cfg)).weight_bytes == expected


def test_weight_bytes_shrink_as_the_scheme_says():
    bf16 = 2 * count_parameters(LLAMA).total
    by_case = {
        case: weight_bytes(
            count_parameters(LLAMA | {"quantization_config": qc}), stored_format(LLAMA | {"quantization_config": qc})
        )
        for case, qc in CASES.items()
    }
    assert by_case["w4a16 group 128"] < by_case["fp8 dynamic"] < bf16
    assert by_case["fp8 dynamic"] == by_case["w8a8 int8, static per-tensor activations"] - 3 * 7 * 2


@pytest.mark.parametrize(
    ("case", "precision", "label", "bits", "group_size"),
    [
        ("w4a16 group 128", "int4", "4-bit compressed-tensors", 4, 128),
        ("w4a16 channel, lm_head quantized too, fp8 kv cache", "int4", "4-bit compressed-tensors", 4, None),
        ("fp8 dynamic", "fp8", "fp8 compressed-tensors", 8, None),
        ("w8a8 int8, static per-tensor activations", "int8", "8-bit compressed-tensors", 8, None),
    ],
)
def test_format_is_read_from_the_config_groups(case, precision, label, bits, group_size):
    fmt = stored_format(LLAMA | {"quantization_config": CASES[case]})
    assert (fmt.precision, fmt.label, fmt.bits, fmt.group_size) == (precision, label, bits, group_size)
    # TGI loads every one of them with --quantize compressed-tensors (its own fp8 would re-quantize 16-bit weights).
    assert fmt.tgi_quantize == "compressed-tensors"
    report = size_model(ModelMetadata(config=LLAMA | {"quantization_config": CASES[case]}))
    assert report.as_dict()["quantize"] == "compressed-tensors"


@pytest.mark.parametrize("name", sorted(p.name for p in CHECKPOINTS.iterdir() if p.is_dir()))
def test_planner_agrees_with_what_llm_compressor_wrote(name):
    """tests/fixtures/compressed-tensors: real llm-compressor output of the tiny model (float32)."""
    folder = CHECKPOINTS / name
    cfg = json.loads((folder / "config.json").read_text())
    stored = header_total(json.loads((folder / "safetensors-header.json").read_text()))
    planned = size_model(ModelMetadata(config=cfg)).weight_bytes
    assert abs(planned - stored) <= 0.05 * stored
    assert planned < 4 * count_parameters(cfg).total  # under the float32 original


def test_a_directory_of_quantized_safetensors_is_planned_at_its_stored_bytes(tmp_path):
    cfg = LLAMA | {"quantization_config": CASES["w4a16 group 64 asymmetric, some modules ignored"]}
    tensors = checkpoint_tensors(cfg)
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, (dtype, shape) in tensors.items():
        size = BYTES[dtype] * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    (tmp_path / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw)  # the header is all it reads
    report = size_model(load_model_metadata(str(tmp_path)))
    assert report.weight_bytes == offset == tensor_bytes(tensors)
    assert report.params == count_parameters(cfg).total  # the logical count, not the packed int32 elements


def test_fp8_kv_cache_scheme_halves_kv_on_vllm_not_on_tgi():
    cfg = LLAMA | {"quantization_config": CASES["w4a16 channel, lm_head quantized too, fp8 kv cache"]}
    bf16_per_token = kv_bytes_per_token(parse_architecture(LLAMA), 2)
    vllm = size_model(ModelMetadata(config=cfg), gpus=GPU, vllm=VllmLimits(max_model_len=1024)).as_dict()
    assert vllm["kv_bytes_per_token"] == bf16_per_token // 2
    assert any("kv_cache_scheme" in note for note in vllm["notes"])
    # TGI takes the cache dtype from --kv-cache-dtype only: 16-bit unless asked, fp8 when asked.
    tgi = size_model(ModelMetadata(config=cfg))
    assert tgi.as_dict()["kv_bytes_per_token"] == bf16_per_token
    assert any("--kv-cache-dtype fp8_e4m3fn" in note for note in tgi.notes)
    asked = size_model(ModelMetadata(config=cfg), kv_cache_dtype="fp8_e4m3fn").as_dict()
    assert asked["kv_bytes_per_token"] == bf16_per_token // 2
    # An explicit 16-bit cache on vLLM is what vLLM uses.
    explicit = size_model(
        ModelMetadata(config=cfg), kv_cache_dtype="bfloat16", gpus=GPU, vllm=VllmLimits(max_model_len=1024)
    )
    assert explicit.as_dict()["kv_bytes_per_token"] == bf16_per_token


def test_another_quantization_on_a_compressed_tensors_checkpoint_is_planned_as_stored():
    cfg = LLAMA | {"quantization_config": CASES["fp8 dynamic"]}
    report = size_model(ModelMetadata(config=cfg), quantize="bitsandbytes-nf4")
    assert report.as_dict()["weight_format"] == "fp8 compressed-tensors"
    assert any("stored as fp8 compressed-tensors" in w for w in report.warnings)

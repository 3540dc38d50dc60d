"""The VRAM planner against real model configs (tests/fixtures/model-configs) and the H200's NVML readings."""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from deployments.sizing import (
    GB,
    GpuCapacity,
    HostCapacity,
    ModelMetadata,
    SizingError,
    count_parameters,
    load_model_metadata,
    size_model,
    stored_format,
    uniform_gpus,
    valid_shard_counts,
    weight_bytes,
)
from deployments.sizing.params import parse_architecture
from tests.support.fixtures import MODEL_CONFIGS, NVML_H200

CONFIGS = MODEL_CONFIGS
EXPECTED = json.loads((CONFIGS / "expected.json").read_text())
NVML = json.loads((NVML_H200).read_text())["gpus"][0]


def config(name: str) -> dict:
    return json.loads((CONFIGS / f"{name}.json").read_text())


def metadata(name: str) -> ModelMetadata:
    return ModelMetadata(config=config(name), source=name)


def h200_host(count: int = 8, name: str = "h200-node") -> HostCapacity:
    """A host of H200s as NVML reported the real one (bytes, milliwatts -> watts)."""
    gpus = [
        GpuCapacity(i, NVML["name"], NVML["memory"]["total"], NVML["memory"]["free"], NVML["power_limit_mw"] / 1000)
        for i in range(count)
    ]
    return HostCapacity(name, gpus)


def small_host(count: int = 2, name: str = "rtx-node") -> HostCapacity:
    return HostCapacity(name, [GpuCapacity(i, "RTX 4090", 24 * GB, 24 * GB, 450.0) for i in range(count)])


# --- parameters and KV per token ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameter_count_is_exact_for_every_fixture(name):
    assert count_parameters(config(name)).total == EXPECTED[name]["params"]
    assert size_model(metadata(name)).params == EXPECTED[name]["params"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_kv_bytes_per_token_match_what_tgi_allocates(name):
    report = size_model(metadata(name))
    expected = EXPECTED[name]
    assert report.kv_bytes_per_token == expected.get(
        "kv_bytes_per_token_bf16", expected.get("kv_bytes_per_token_bf16_as_tgi_allocates")
    )
    assert report.as_dict()["kv_bytes_per_token_latent"] == expected.get("kv_bytes_per_token_bf16_latent_only")


def test_deepseek_v2_lite_plans_the_padded_full_heads_not_the_latent():
    report = size_model(metadata("deepseek-v2-lite")).as_dict()
    assert report["kv_bytes_per_token"] == 331776  # 2 x 27 layers x 16 heads x max(128+64, 128) x 2 bytes
    assert report["kv_bytes_per_token_latent"] == 31104  # 27 x (512 + 64) x 2
    assert report["kv_bytes"] == 331776 * report["max_batch_total_tokens"]


def test_fp8_kv_cache_halves_the_kv_bytes():
    plain = size_model(metadata("llama-3-70b"), max_total_tokens=8192)
    fp8 = size_model(metadata("llama-3-70b"), max_total_tokens=8192, kv_cache_dtype="fp8_e4m3fn")
    assert fp8.kv_bytes_per_token * 2 == plain.kv_bytes_per_token == 327680
    assert fp8.kv_bytes * 2 == plain.kv_bytes
    assert fp8.weight_bytes == plain.weight_bytes


def test_kv_pool_follows_max_batch_total_tokens():
    report = size_model(metadata("deepseek-llm-7b-base"), max_total_tokens=2048, max_batch_total_tokens=16000)
    assert report.kv_bytes == 491520 * 16000
    assert report.as_dict()["max_input_tokens"] == 2047


# --- weights per precision ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "seed_gb"),
    [
        ("deepseek-llm-7b-base", 14),
        ("deepseek-coder-33b-base", 65),
        ("deepseek-llm-67b-base", 140),
        ("llama-3-70b", 140),
    ],
)
def test_bf16_weights_agree_with_the_seed_table(name, seed_gb):
    report = size_model(metadata(name))
    assert report.as_dict()["precision"] == "bf16"
    assert report.weight_bytes == 2 * EXPECTED[name]["params"]
    assert abs(report.weight_bytes / GB - seed_gb) <= 0.05 * seed_gb


@pytest.mark.parametrize(
    ("name", "method"), [("qwen2.5-7b-instruct-awq", "awq"), ("deepseek-llm-7b-chat-gptq", "gptq")]
)
def test_awq_and_gptq_checkpoints_are_recognised_from_quantization_config(name, method):
    fmt = stored_format(config(name))
    assert (fmt.precision, fmt.method, fmt.bits, fmt.group_size) == ("int4", method, 4, 128)
    report = size_model(metadata(name))
    data = report.as_dict()
    assert data["precision"] == "int4"
    assert data["quantize"] == method
    rows = {row["precision"]: row for row in data["rows"]}
    assert rows["int4"]["stored"] is True
    assert rows["bf16"]["weight_bytes"] == 2 * EXPECTED[name]["params"]
    # The quantized linears shrink 2 / (0.5 + 2.5/128) ~ 3.85x; embeddings and lm_head stay fp16 in these checkpoints,
    # and with 100k-150k vocabularies they keep the whole-model ratio of a 7B near 2.7-2.9x.
    breakdown = count_parameters(config(name))
    linear_4bit = report.weight_bytes - 2 * breakdown.dense_params
    assert 3.3 <= 2 * breakdown.linear_params / linear_4bit <= 3.9
    assert 2.5 <= rows["bf16"]["weight_bytes"] / report.weight_bytes <= 3.0


def test_awq_checkpoint_weighs_what_the_published_one_does():
    # Qwen/Qwen2.5-7B-Instruct-AWQ ships about 5.6 GB of safetensors.
    assert 5.4 * GB <= size_model(metadata("qwen2.5-7b-instruct-awq")).weight_bytes <= 5.8 * GB


def test_4bit_of_a_70b_is_three_and_a_half_times_smaller():
    breakdown = count_parameters(config("llama-3-70b"))
    awq = size_model(metadata("llama-3-70b"), quantize="awq")
    assert awq.as_dict()["weight_format"] == "4-bit AWQ"
    assert any("needs a checkpoint already quantized" in w for w in awq.warnings)
    assert 3.3 <= 2 * breakdown.total / awq.weight_bytes <= 3.9


def test_quantize_values_map_to_byte_widths():
    breakdown = count_parameters(config("deepseek-llm-7b-base"))
    by_flag = {
        flag: size_model(metadata("deepseek-llm-7b-base"), quantize=flag).weight_bytes
        for flag in ("bf16", "fp8", "eetq", "bitsandbytes", "awq", "gptq", "bitsandbytes-nf4")
    }
    assert by_flag["bf16"] == 2 * breakdown.total
    # 8-bit: one byte per linear weight (+ a scale per output channel), embeddings/head/norms at two.
    assert 1.0 <= (by_flag["eetq"] - 2 * breakdown.dense_params) / breakdown.linear_params < 1.01
    assert by_flag["fp8"] == by_flag["eetq"] == by_flag["bitsandbytes"]
    for flag in ("awq", "gptq", "bitsandbytes-nf4"):
        per_linear = (by_flag[flag] - 2 * breakdown.dense_params) / breakdown.linear_params
        assert 0.5 < per_linear < 0.53, flag


def test_an_unknown_quantize_value_is_a_clear_error():
    with pytest.raises(SizingError) as caught:
        size_model(metadata("deepseek-llm-7b-base"), quantize="int3")
    assert caught.value.field == "quantize"
    assert "awq" in caught.value.message


def test_quantize_cannot_re_encode_a_prequantized_checkpoint():
    report = size_model(metadata("deepseek-llm-7b-chat-gptq"), quantize="fp8")
    assert report.as_dict()["weight_format"] == "4-bit GPTQ"
    assert any("stored as 4-bit GPTQ" in w for w in report.warnings)


def test_exl2_is_never_sharded():
    cfg = config("llama-3-70b") | {"quantization_config": {"quant_method": "exl2", "bits": 4.0}}
    report = size_model(ModelMetadata(config=cfg), inventory=[small_host(8)])
    assert report.num_shard == 1
    assert report.fits is False
    assert valid_shard_counts(parse_architecture(cfg), stored_format(cfg)) == [1]


# --- plans, GPU sets, warnings -----------------------------------------------------------------------------


def test_llama3_70b_bf16_does_not_fit_two_40gb_gpus_and_says_what_would():
    report = size_model(metadata("llama-3-70b"), gpus=uniform_gpus(2, 40 * GB))
    assert report.fits is False
    assert report.num_shard == 2
    assert report.per_gpu_bytes > 36 * GB  # 40 GB less the 10 % TGI's warmup leaves free
    (warning,) = report.warnings
    assert warning.startswith("needs ") and "at bf16" in warning
    assert "2 x 40 GB selected" in warning
    assert "4-bit AWQ" in warning
    assert "8 GPUs" in warning  # 4 x 40 GB is just short, and 5-7 do not divide 64 heads / 8 KV heads
    rows = {row["precision"]: row for row in report.as_dict()["rows"]}
    assert rows["int4"]["fits"] is True and rows["fp8"]["fits"] is False


def test_per_gpu_total_after_a_tensor_parallel_split():
    one = size_model(metadata("llama-3-70b"), num_shard=1)
    two = size_model(metadata("llama-3-70b"), num_shard=2)
    context_and_workspace = one.overhead_bytes
    assert two.overhead_bytes == 2 * context_and_workspace
    assert two.per_gpu_bytes == pytest.approx((one.weight_bytes + one.kv_bytes) / 2 + context_and_workspace, abs=2)
    assert two.fits is None  # no GPUs given: sizes only


def test_smallest_fitting_set_is_chosen_from_the_inventory():
    inventory = [h200_host(8), small_host(2)]
    seven = size_model(metadata("deepseek-llm-7b-base"), inventory=inventory)
    assert seven.fits is True
    assert seven.num_shard == 1
    assert seven.primary.gpu_set.host == "rtx-node"  # one 24 GB card is enough: keep the H200s free

    seventy = size_model(metadata("llama-3-70b"), inventory=inventory)
    data = seventy.as_dict()
    # ~141 GB of weights: one H200 (150.75 GB, ~135 GB usable by TGI) is short, two are plenty.
    assert data["fits"] is True
    assert data["num_shard"] == 2
    assert data["gpu_set"]["host"] == "h200-node"
    assert len(data["gpu_set"]["gpu_indexes"]) == 2
    assert data["power_range_w"]["max_w"] == 1400.0
    assert 0 < data["power_range_w"]["min_w"] < 1400.0
    assert 64 % data["num_shard"] == 0 and 8 % data["num_shard"] == 0


def test_offline_hosts_and_busy_gpus_are_skipped():
    busy = HostCapacity("busy", [GpuCapacity(i, "H200", NVML["memory"]["total"], 10 * GB, 700.0) for i in range(8)])
    offline = h200_host(8, "down")
    offline.online = False
    report = size_model(metadata("deepseek-llm-7b-base"), inventory=[busy, offline])
    assert report.fits is False
    assert report.primary.gpu_set is None
    assert any("no online host" in w for w in report.warnings)


def test_num_shard_is_never_an_invalid_divisor():
    arch = parse_architecture(config("qwen2.5-32b"))  # 40 heads, 8 KV heads
    assert valid_shard_counts(arch) == [1, 2, 4, 8]
    # Three 24 GB cards would hold 32B in bf16, but 3 does not divide 40 heads: no plan rather than a bad one.
    three = size_model(metadata("qwen2.5-32b"), inventory=[small_host(3)])
    assert three.fits is False
    assert all(row.estimate.num_shard != 3 for row in three.rows)
    eight = size_model(metadata("qwen2.5-32b"), inventory=[small_host(8)])
    assert eight.num_shard == 4 and eight.fits is True
    forced = size_model(metadata("qwen2.5-32b"), gpus=uniform_gpus(3, 40 * GB))
    assert forced.fits is False
    assert any("num_shard 3 is not allowed" in w and "1, 2, 4, 8" in w for w in forced.warnings)


def test_token_limits_follow_tgi_rules():
    with pytest.raises(SizingError) as caught:
        size_model(metadata("llama-3-70b"), max_input_tokens=4096, max_total_tokens=4096)
    assert caught.value.field == "max_input_tokens"
    with pytest.raises(SizingError) as caught:
        size_model(metadata("llama-3-70b"), max_total_tokens=8192, max_batch_total_tokens=4096)
    assert caught.value.field == "max_batch_total_tokens"
    defaults = size_model(metadata("llama-3-70b")).as_dict()
    assert (defaults["max_input_tokens"], defaults["max_total_tokens"], defaults["max_batch_total_tokens"]) == (
        4095,
        4096,
        4096,
    )


def test_prefill_workspace_scales_with_prefill_tokens_and_hidden_size():
    seven = size_model(metadata("deepseek-llm-7b-base")).as_dict()  # hidden 4096, 4096-token prefill
    assert seven["workspace_bytes_per_gpu"] == 540_000_000
    assert seven["context_bytes_per_gpu"] == 730_000_000
    double = size_model(
        metadata("deepseek-llm-7b-base"), max_batch_prefill_tokens=8192, max_batch_total_tokens=8192
    ).as_dict()
    assert double["workspace_bytes_per_gpu"] == 2 * 540_000_000
    seventy = size_model(metadata("llama-3-70b")).as_dict()  # hidden 8192
    assert seventy["workspace_bytes_per_gpu"] == 2 * 540_000_000


def test_report_dict_has_the_documented_keys():
    data = size_model(metadata("deepseek-llm-7b-base"), inventory=[small_host(2)]).as_dict()
    for key in (
        "params",
        "weight_bytes",
        "kv_bytes_per_token",
        "kv_bytes",
        "overhead_bytes",
        "total_bytes",
        "per_gpu_bytes",
        "num_shard",
        "fits",
        "warnings",
        "rows",
        "constants",
    ):
        assert key in data, key
    assert [row["precision"] for row in data["rows"]] == ["bf16", "fp8", "int8", "int4"]
    for row in data["rows"]:
        assert set(row) >= {"precision", "weight_bytes", "total_bytes", "gpu_set", "power_range_w", "fits"}
        assert set(row["gpu_set"]) >= {"host", "gpu_indexes", "num_shard"}
    json.dumps(data)


# --- metadata from a local directory -----------------------------------------------------------------------

TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "num_hidden_layers": 2,
    "vocab_size": 100,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "max_position_embeddings": 2048,
}


def tiny_tensors(extra: dict[str, list[int]] | None = None) -> dict[str, list[int]]:
    """Tensor name -> shape for TINY, as transformers names them."""
    h, i, kv = 64, 128, 2 * 16
    shapes = {"model.embed_tokens.weight": [100, h], "lm_head.weight": [100, h], "model.norm.weight": [h]}
    for layer in range(2):
        p = f"model.layers.{layer}."
        shapes |= {
            p + "self_attn.q_proj.weight": [h, h],
            p + "self_attn.k_proj.weight": [kv, h],
            p + "self_attn.v_proj.weight": [kv, h],
            p + "self_attn.o_proj.weight": [h, h],
            p + "mlp.gate_proj.weight": [i, h],
            p + "mlp.up_proj.weight": [i, h],
            p + "mlp.down_proj.weight": [h, i],
            p + "input_layernorm.weight": [h],
            p + "post_attention_layernorm.weight": [h],
        }
    return shapes | (extra or {})


def write_safetensors(path: Path, shapes: dict[str, list[int]], dtype: str = "BF16") -> None:
    """A valid safetensors file: 8-byte little-endian header length, JSON header, then zeroed tensor data."""
    header, offset, width = {"__metadata__": {"format": "pt"}}, 0, 2
    for name, shape in shapes.items():
        size = width
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header to 8 bytes
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


def count(shapes: dict[str, list[int]]) -> int:
    total = 0
    for shape in shapes.values():
        n = 1
        for dim in shape:
            n *= dim
        total += n
    return total


def test_local_directory_counts_params_from_safetensors_headers(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    shapes = tiny_tensors()
    write_safetensors(tmp_path / "model.safetensors", shapes)
    meta = load_model_metadata(str(tmp_path))
    assert meta.local is True and meta.revision_sha is None
    assert meta.safetensors_params == {"BF16": count(shapes)}
    assert meta.total_params == count(shapes) == count_parameters(TINY).total
    assert {"config.json", "model.safetensors"} <= set(meta.files)
    report = size_model(meta)
    assert report.params_source == "safetensors"
    assert report.params == count(shapes)


def test_headers_win_over_the_architecture_when_they_disagree(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    shapes = tiny_tensors({"vision_tower.proj.weight": [512, 512]})  # not described by the text config
    write_safetensors(tmp_path / "model.safetensors", shapes)
    report = size_model(load_model_metadata(str(tmp_path)))
    assert report.params == count(shapes) == count_parameters(TINY).total + 512 * 512
    assert report.weight_bytes == 2 * count(shapes)
    assert any("safetensors headers hold" in note for note in report.notes)


def test_sharded_checkpoint_is_read_through_its_index(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY))
    shapes = tiny_tensors()
    names = sorted(shapes)
    first, second = dict.fromkeys(names[: len(names) // 2]), dict.fromkeys(names[len(names) // 2 :])
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors", {n: shapes[n] for n in first})
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {n: shapes[n] for n in second})
    weight_map = {n: "model-00001-of-00002.safetensors" for n in first} | {
        n: "model-00002-of-00002.safetensors" for n in second
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert load_model_metadata(str(tmp_path)).total_params == count(shapes)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    partial = load_model_metadata(str(tmp_path))
    assert partial.safetensors_params is None  # half a count would understate the model
    assert size_model(partial).params == count_parameters(TINY).total


def test_quantized_checkpoint_takes_stored_bytes_from_headers(tmp_path):
    cfg = config("qwen2.5-7b-instruct-awq")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    write_safetensors(tmp_path / "model.safetensors", {"qweight": [1000, 125]}, dtype="I32")
    report = size_model(load_model_metadata(str(tmp_path)))
    assert report.params == EXPECTED["qwen2.5-7b-instruct-awq"]["params"]  # logical count: from the architecture
    assert report.weight_bytes == 1000 * 125 * 4  # stored bytes: exact from the headers


def test_directory_without_safetensors_falls_back_to_the_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config("llama-3-70b")))
    meta = load_model_metadata(str(tmp_path))
    assert meta.safetensors_params is None and meta.total_params is None
    assert size_model(meta).params == EXPECTED["llama-3-70b"]["params"]


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [("no-config", "no config.json"), ("bad-json", "not valid JSON"), ("bad-safetensors", "safetensors")],
)
def test_local_errors_are_clear(tmp_path, setup, fragment):
    if setup != "no-config":
        (tmp_path / "config.json").write_text("{" if setup == "bad-json" else json.dumps(TINY))
    if setup == "bad-safetensors":
        (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 5) + b"nope!")
    with pytest.raises(SizingError) as caught:
        load_model_metadata(str(tmp_path))
    assert fragment in caught.value.message
    assert caught.value.field == "source"


def test_missing_directory_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(SizingError) as caught:
        load_model_metadata(str(tmp_path / "absent" / "model"))
    assert "does not exist" in caught.value.message


def test_weight_bytes_of_a_bare_breakdown():
    breakdown = count_parameters(TINY)
    assert weight_bytes(breakdown, stored_format(TINY)) == 2 * breakdown.total


# --- the management command --------------------------------------------------------------------------------


@pytest.fixture
def tiny_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(config("llama-3-70b")))
    return tmp_path


@pytest.mark.django_db
def test_command_json_has_the_required_keys(tiny_dir):
    out = io.StringIO()
    call_command("size_model", str(tiny_dir), "--json", "--max-total-tokens", "8192", stdout=out)
    data = json.loads(out.getvalue())
    for key in ("params", "weight_bytes", "kv_bytes_per_token", "total_bytes", "num_shard", "fits"):
        assert key in data, key
    assert data["params"] == EXPECTED["llama-3-70b"]["params"]
    assert data["kv_bytes"] == 327680 * 8192


@pytest.mark.django_db
def test_command_table_uses_the_inventory(tiny_dir, monkeypatch):
    from deployments.management.commands import size_model as command

    monkeypatch.setattr(command, "inventory", lambda: [h200_host(8), small_host(2)])
    out = io.StringIO()
    call_command("size_model", str(tiny_dir), "--quantize", "awq", stdout=out)
    text = out.getvalue()
    assert "4-bit AWQ" in text and "bf16" in text
    assert "h200-node: GPU 0,1" in text  # bf16 row: two H200s
    assert "119-700" in text  # power range of one H200: idle estimate (the fixture's 118.6 W) .. limit
    assert "needs a checkpoint already quantized" in text


@pytest.mark.django_db
def test_command_reports_errors_plainly(tmp_path):
    with pytest.raises(CommandError, match=r"no config\.json"):
        call_command("size_model", str(tmp_path), stdout=io.StringIO())


@pytest.mark.django_db
def test_command_plans_for_vllm_with_its_own_settings(tmp_path, monkeypatch):
    from deployments.management.commands import size_model as command

    (tmp_path / "config.json").write_text(json.dumps(config("deepseek-llm-7b-base")))
    monkeypatch.setattr(command, "inventory", lambda: [h200_host(1)])
    out = io.StringIO()
    call_command("size_model", str(tmp_path), "--backend", "vllm", "--max-model-len", "4096", stdout=out)
    text = out.getvalue()
    assert "vLLM: vLLM may use" in text and "KV cache:" in text and "At max_model_len 4,096" in text
    data = io.StringIO()
    call_command("size_model", str(tmp_path), "--backend", "vllm", "--json", stdout=data)
    assert json.loads(data.getvalue())["vllm"]["kv_tokens"] > 0
    with pytest.raises(CommandError, match="--max-total-tokens: TGI settings"):
        call_command("size_model", str(tmp_path), "--backend", "vllm", "--max-total-tokens", "2048", stdout=out)
    with pytest.raises(CommandError, match=r"gpu_memory_utilization"):
        call_command("size_model", str(tmp_path), "--backend", "vllm", "--gpu-memory-utilization", "0.1", stdout=out)

"""The planner against transformers' own numbers for every causal-LM architecture transformers registers.

tests/fixtures/model-configs/param-counts.json holds, per architecture of MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, the
parameter count of meta-device instantiations (defaults with every value implicit, the defaults written out,
variants moving what config.json often omits, real configs) and the K/V shapes of the cache after a forward pass
(generate_param_counts.py, run in the ML environment). The planner sees config.json alone. The table of
exact / refused / off per architecture is written to test-artifacts/planner-architectures.md.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from deployments.models import AllowedEndpoint
from deployments.sizing import SizingError, count_parameters, kv_bytes_per_token, kv_bytes_per_token_latent
from deployments.sizing.architectures import supported_architectures
from deployments.sizing.params import parse_architecture
from tests.support.fixtures import MODEL_CONFIGS, ROOT

FIXTURE = json.loads((MODEL_CONFIGS / "param-counts.json").read_text())
ARCHITECTURES = FIXTURE["architectures"]
# What the issue asks the planner to size exactly, whatever else it claims.
REQUIRED = {
    "llama",
    "mistral",
    "mixtral",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi3",
    "deepseek_v2",
    "deepseek_v3",
}
TABLE = Path(os.environ.get("PLANNER_TABLE", ROOT / "test-artifacts" / "planner-architectures.md"))
BF16 = 2


def planner_count(config: dict) -> int | str:
    """The planner's count, or its refusal's text."""
    try:
        return count_parameters(config).total
    except SizingError as exc:
        return f"refused: {exc}"


def verdict(model_type: str, entry: dict) -> tuple[str, str]:
    """exact / refused / off for one architecture, with a detail for the table."""
    counted = [case for case in entry["cases"] if "params" in case]
    answers = [(case, planner_count(case["config"])) for case in counted]
    refusals = [answer for _, answer in answers if isinstance(answer, str)]
    if not counted:  # transformers itself cannot build it here: the planner must not size it either
        answer = planner_count(entry["cases"][0]["config"])
        if isinstance(answer, str) and "not supported by the planner" in answer:
            return "refused", f"transformers cannot build it here ({entry['cases'][0]['error'][:60]})"
        return "off", f"sized as {answer} though transformers cannot build it"
    if len(refusals) == len(answers) and all("not supported by the planner" in r for r in refusals):
        return "refused", f"{counted[0]['params']:,} parameters by transformers"
    wrong = [f"{case['name']}: {answer} != {case['params']}" for case, answer in answers if answer != case["params"]]
    if wrong:
        return "off", "; ".join(wrong[:3])
    return "exact", f"{len(counted)} configs: " + ", ".join(case["name"] for case in counted)


def write_table(rows: list[tuple[str, str, str]]) -> None:
    counts = {status: sum(1 for _, s, _ in rows if s == status) for status in ("exact", "refused", "off")}
    lines = [
        f"# Planner vs transformers {FIXTURE['transformers_version']}: parameter counts per causal-LM architecture",
        "",
        f"{len(rows)} architectures: {counts['exact']} exact, {counts['refused']} refused, {counts['off']} off.",
        "",
        "| model_type | planner | detail |",
        "|---|---|---|",
    ] + [f"| {model_type} | {status} | {detail} |" for model_type, status, detail in rows]
    TABLE.parent.mkdir(parents=True, exist_ok=True)
    TABLE.write_text("\n".join(lines) + "\n")
    print(lines[2])


def test_every_causal_lm_architecture_is_counted_exactly_or_refused_by_name():
    rows = [(model_type, *verdict(model_type, entry)) for model_type, entry in sorted(ARCHITECTURES.items())]
    write_table(rows)
    status = {model_type: s for model_type, s, _ in rows}
    assert [row for row in rows if row[1] == "off"] == []
    # The claim is the proof: what the planner supports is exactly what comes out exact, and covers the required.
    assert {model_type for model_type, s in status.items() if s == "exact"} == supported_architectures()
    assert supported_architectures() >= REQUIRED
    assert len(ARCHITECTURES) > 150  # the whole auto mapping, not a hand-picked few


def test_an_implicit_value_takes_the_architecture_default_not_a_global_guess():
    # Gemma: head_dim 256 and tied embeddings by default, whatever hidden_size / heads would suggest.
    gemma = {"model_type": "gemma", "hidden_size": 512, "num_attention_heads": 8, "num_hidden_layers": 2}
    arch = parse_architecture(gemma)
    assert (arch.head_dim, arch.tie_word_embeddings, arch.num_kv_heads) == (256, True, 16)
    # qwen2 leaves num_key_value_heads at the class default (32), not num_attention_heads.
    assert parse_architecture({"model_type": "qwen2", "num_attention_heads": 16}).num_kv_heads == 32
    assert parse_architecture({"model_type": "llama", "num_attention_heads": 16}).num_kv_heads == 16


@pytest.mark.parametrize("config", [{"model_type": "gpt2"}, {"model_type": "falcon_h1"}, {"hidden_size": 64}])
def test_other_architectures_are_refused_by_name(config):
    with pytest.raises(SizingError, match="not supported by the planner") as info:
        count_parameters(config)
    assert info.value.field == "source"
    if "model_type" in config:
        assert config["model_type"] in str(info.value)


def kv_cases():
    for model_type in sorted(supported_architectures()):
        for case in ARCHITECTURES[model_type]["cases"]:
            yield model_type, case


def test_kv_bytes_per_token_match_the_cache_transformers_allocates():
    checked, not_runnable, kinds = [], [], set()
    for model_type, case in kv_cases():
        if "kv_error" in case:
            # Only configs transformers cannot run itself (fewer query heads than KV heads and the like).
            assert "size of tensor" in case["kv_error"], (model_type, case["name"], case["kv_error"])
            not_runnable.append(f"{model_type}/{case['name']}")
            continue
        arch = parse_architecture(case["config"])
        layers = case["kv_layers"]
        assert len(layers) == arch.num_layers, (model_type, case["name"])
        cached = sum(layer["k"][0] * layer["k"][1] + layer["v"][0] * layer["v"][1] for layer in layers) * BF16
        if "mla" in case:
            # transformers caches MLA's compressed latent and rope key; TGI rebuilds full K and V for each of its
            # num_key_value_heads, both padded to max(qk_head_dim, v_head_dim): the planner plans TGI's and reports
            # the latent apart.
            mla = case["mla"]
            tgi = 2 * arch.num_layers * mla["kv_heads"] * max(mla["qk_head_dim"], mla["v_head_dim"]) * BF16
            assert kv_bytes_per_token_latent(arch, BF16) == cached, (model_type, case["name"])
            assert kv_bytes_per_token(arch, BF16) == tgi, (model_type, case["name"])
            kinds.add("mla")
        else:
            # Sliding-window layers hold the same per-token K/V until the window fills; TGI allocates every
            # layer for the full sequence, so the planner counts them all.
            assert kv_bytes_per_token(arch, BF16) == cached, (model_type, case["name"])
            window = {layer["kind"] for layer in layers}
            heads = {layer["k"][0] for layer in layers}
            kinds.add("mqa" if heads == {1} else "gqa" if max(heads) < arch.num_heads else "mha")
            if "DynamicSlidingWindowLayer" in window:
                kinds.add("hybrid" if len(window) > 1 else "sliding")
        checked.append(f"{model_type}/{case['name']}")
    print(f"KV per token: {len(checked)} configs exact, {len(not_runnable)} not runnable by transformers")
    assert kinds == {"mha", "gqa", "mqa", "mla", "sliding", "hybrid"}
    # Every supported architecture is checked on its defaults and on every real config.
    for model_type in supported_architectures():
        assert f"{model_type}/defaults" in checked
    assert all(f"{t}/{c['name']}" in checked for t, c in kv_cases() if c["name"].startswith("real:"))


@pytest.mark.django_db
def test_the_planner_refuses_an_unsupported_architecture_as_a_field_error(api, engineer, client, hub_server):
    AllowedEndpoint.objects.get_or_create(pattern="127.0.0.1")
    config = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257}
    hub_server.add_repo("openai-community/gpt2", {"config.json": json.dumps(config).encode()})
    answer = api(engineer).get("/api/v1/sizing/?source=openai-community/gpt2", expected=400).data
    assert "'gpt2' is not supported by the planner" in answer["source"][0]
    client.force_login(engineer)
    page = client.get("/inventory/sizing/?source=openai-community/gpt2").content.decode()
    assert "is not supported by the planner" in page and "data-precision=" not in page

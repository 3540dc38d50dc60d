"""Parameter counts from a model's config.json, kept per linear layer so quantized sizes can be exact.

The counts follow the module layout transformers builds for each supported architecture, checked against
meta-device instantiations of every case in tests/fixtures/model-configs/param-counts.json
(tests/deployments/sizing/test_architectures.py); other architectures are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deployments.sizing.architectures import architecture_defaults, supported_architectures
from deployments.sizing.errors import SizingError, gettext_noop

# model_type values whose q/k/v projections always carry a bias, whatever `attention_bias` says.
QKV_BIAS_MODEL_TYPES = frozenset({"qwen2", "qwen2_moe"})
# Per-head query/key RMSNorm (qwen3, gemma3), and Gemma 2/3's extra norms before and after the MLP.
QK_NORM_MODEL_TYPES = frozenset({"qwen3", "qwen3_moe", "gemma3_text", "exaone4"})
FOUR_NORM_MODEL_TYPES = frozenset({"gemma2", "gemma3_text", "glm4"})
# Cohere 2: attention and MLP side by side after one LayerNorm (weight only) per layer.
ONE_NORM_MODEL_TYPES = frozenset({"cohere2"})
# OLMo 2/3, OLMoE, FlexOlmo, MiniMax-M2: query/key RMSNorm over the whole projection (all heads at once).
FULL_QK_NORM_MODEL_TYPES = frozenset({"olmo2", "olmo3", "olmoe", "flex_olmo", "minimax_m2"})
# Arcee: an MLP without gate (up, activation, down).
PLAIN_MLP_MODEL_TYPES = frozenset({"arcee"})
# GLM: attention_bias puts a bias on q, k and v only.
QKV_BIAS_FLAG_MODEL_TYPES = frozenset({"glm", "glm4"})
# Multi-head latent attention (DeepSeek-V2/V3): the attention weights and the KV cache follow other rules.
MLA_MODEL_TYPES = frozenset({"deepseek_v2", "deepseek_v3"})


@dataclass(frozen=True)
class LinearGroup:
    """`count` identical linear weights of shape (out_features, in_features), e.g. one projection in every layer."""

    name: str
    in_features: int
    out_features: int
    count: int = 1

    @property
    def params(self) -> int:
        """Weight elements of the whole group (biases are counted apart)."""
        return self.in_features * self.out_features * self.count


@dataclass(frozen=True)
class Architecture:
    """The config.json numbers the planner needs, with the defaults transformers applies."""

    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int | None
    torch_dtype: str | None
    # MLA (DeepSeek-V2/V3) only; zero elsewhere.
    kv_lora_rank: int = 0
    q_lora_rank: int | None = None
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0

    @property
    def is_mla(self) -> bool:
        """True for multi-head latent attention checkpoints."""
        return self.model_type in MLA_MODEL_TYPES and self.kv_lora_rank > 0

    @property
    def kv_head_dim(self) -> int:
        """Per-head width of one cached K or V vector as TGI allocates it.

        TGI's flash_deepseek_v2 rebuilds full per-head K and V and pads both to the larger of the key
        width (nope + rope) and the value width, so that is what each cache slot holds.
        """
        if self.is_mla:
            return max(self.qk_nope_head_dim + self.qk_rope_head_dim, self.v_head_dim)
        return self.head_dim


@dataclass
class ParamBreakdown:
    """Parameters split by how quantization treats them.

    `linears` are the decoder-block projections that AWQ/GPTQ/bitsandbytes/fp8 quantize; everything else
    (embeddings, lm_head, norms, biases, MoE router gates) stays in 16-bit in such checkpoints.
    """

    linears: list[LinearGroup] = field(default_factory=list)
    embedding: int = 0
    lm_head: int = 0
    norms: int = 0
    biases: int = 0
    router: int = 0
    # Parameters the safetensors headers hold beyond (or short of) the architecture count, e.g. a vision tower.
    extra_linear: int = 0
    # The shape numbers a quantized lm_head and per-layer scales need (compressed-tensors sizing).
    hidden_size: int = 0
    num_layers: int = 0

    @property
    def linear_params(self) -> int:
        """Elements in quantizable linear weights."""
        return sum(group.params for group in self.linears) + self.extra_linear

    @property
    def dense_params(self) -> int:
        """Elements that stay 16-bit under weight-only quantization."""
        return self.embedding + self.lm_head + self.norms + self.biases + self.router

    @property
    def total(self) -> int:
        """All parameters."""
        return self.linear_params + self.dense_params


def _int(config: dict[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None:
        raise SizingError(f"config.json has no `{key}`; cannot size this architecture", "config")
    try:
        return int(value)
    except (TypeError, ValueError) as exc:
        raise SizingError(f"config.json `{key}` is not a number: {value!r}", "config") from exc


# Multimodal wrappers whose language model is one of the supported text architectures (config.json nests it).
_TEXT_MODEL_TYPES = {"gemma3": "gemma3_text"}


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language-model part of a config: multimodal checkpoints nest it under `text_config`."""
    nested = config.get("text_config")
    if isinstance(nested, dict) and "hidden_size" not in config:
        merged = dict(nested)
        if not merged.get("model_type") and config.get("model_type") in _TEXT_MODEL_TYPES:
            merged["model_type"] = _TEXT_MODEL_TYPES[config["model_type"]]
        # The quantization description lives at the top level even when the text config is nested.
        merged.setdefault("quantization_config", config.get("quantization_config"))
        merged.setdefault("torch_dtype", config.get("torch_dtype") or config.get("dtype"))
        return merged
    return config


def with_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """config.json (its language model) with the architecture's defaults filled in where it is silent.

    The defaults are the config class's own (architecture_defaults.json, extracted from transformers), so an
    omitted head_dim or tie_word_embeddings means for Gemma what it means to transformers, not a global guess.
    Architectures whose sizes are not checked against transformers are refused rather than sized wrongly.
    """
    config = text_config(config)
    model_type = str(config.get("model_type") or "")
    if model_type not in supported_architectures():
        if not model_type:
            raise SizingError(
                gettext_noop("config.json names no model_type: this architecture is not supported by the planner"),
                "source",
            )
        raise SizingError(
            gettext_noop("architecture %(model_type)r is not supported by the planner"),
            "source",
            model_type=model_type,
        )
    return {**architecture_defaults(model_type), **config}


def parse_architecture(config: dict[str, Any]) -> Architecture:
    """Read the sizes from config.json, with transformers' rules for values it leaves out (None means derived)."""
    config = with_defaults(config)
    hidden = _int(config, "hidden_size")
    heads = _int(config, "num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads  # None: plain multi-head attention
    head_dim = config.get("head_dim") or hidden // heads
    return Architecture(
        model_type=str(config["model_type"]),
        hidden_size=hidden,
        num_layers=_int(config, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=int(head_dim),
        intermediate_size=_int(config, "intermediate_size"),
        vocab_size=_int(config, "vocab_size"),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        max_position_embeddings=config.get("max_position_embeddings"),
        torch_dtype=config.get("torch_dtype") or config.get("dtype"),
        kv_lora_rank=int(config.get("kv_lora_rank") or 0),
        q_lora_rank=config.get("q_lora_rank"),
        qk_nope_head_dim=int(config.get("qk_nope_head_dim") or 0),
        qk_rope_head_dim=int(config.get("qk_rope_head_dim") or 0),
        v_head_dim=int(config.get("v_head_dim") or 0),
    )


def _attention(arch: Architecture, config: dict[str, Any], out: ParamBreakdown) -> None:
    h, n, layers = arch.hidden_size, arch.num_heads, arch.num_layers
    bias = bool(config.get("attention_bias"))
    if arch.is_mla:
        qk_dim = arch.qk_nope_head_dim + arch.qk_rope_head_dim
        kv_a_out = arch.kv_lora_rank + arch.qk_rope_head_dim
        if arch.q_lora_rank:  # V2/V3 full size: low-rank query with its own RMSNorm
            out.linears.append(LinearGroup("q_a_proj", h, arch.q_lora_rank, layers))
            out.linears.append(LinearGroup("q_b_proj", arch.q_lora_rank, n * qk_dim, layers))
            out.norms += arch.q_lora_rank * layers
            out.biases += arch.q_lora_rank * layers if bias else 0
        else:  # V2-Lite: q_lora_rank is null, a plain query projection (never with a bias)
            out.linears.append(LinearGroup("q_proj", h, n * qk_dim, layers))
        out.linears.append(LinearGroup("kv_a_proj_with_mqa", h, kv_a_out, layers))
        out.norms += arch.kv_lora_rank * layers  # kv_a_layernorm
        kv_b_out = n * (arch.qk_nope_head_dim + arch.v_head_dim)
        out.linears.append(LinearGroup("kv_b_proj", arch.kv_lora_rank, kv_b_out, layers))
        out.linears.append(LinearGroup("o_proj", n * arch.v_head_dim, h, layers))
        if bias:  # attention_bias: kv_a_proj_with_mqa and o_proj
            out.biases += (kv_a_out + h) * layers
        return
    q_out, kv_out = n * arch.head_dim, arch.num_kv_heads * arch.head_dim
    out.linears += [
        LinearGroup("q_proj", h, q_out, layers),
        LinearGroup("k_proj", h, kv_out, layers),
        LinearGroup("v_proj", h, kv_out, layers),
        LinearGroup("o_proj", q_out, h, layers),
    ]
    if arch.model_type in QKV_BIAS_MODEL_TYPES:  # qwen2: bias on q, k, v only (qwen2_moe: when qkv_bias)
        qkv_bias, o_bias = bool(config.get("qkv_bias", True)), False
    elif arch.model_type in QKV_BIAS_FLAG_MODEL_TYPES:  # GLM: attention_bias on q, k, v only
        qkv_bias, o_bias = bias, False
    elif arch.model_type == "seed_oss":  # Seed-OSS: the output projection has its own flag
        qkv_bias, o_bias = bias, bool(config.get("attention_out_bias"))
    else:  # llama-style flag (ERNIE 4.5: use_bias): bias on q, k, v and o
        qkv_bias = o_bias = bias or bool(config.get("use_bias"))
    out.biases += ((q_out + 2 * kv_out) * qkv_bias + h * o_bias) * layers
    if arch.model_type in QK_NORM_MODEL_TYPES:  # RMSNorm over each head's query and key
        out.norms += 2 * arch.head_dim * layers
    elif arch.model_type in FULL_QK_NORM_MODEL_TYPES:
        out.norms += (q_out + kv_out) * layers


def _plain_mlp(hidden: int, intermediate: int, count: int, out: ParamBreakdown, bias: bool) -> None:
    """Arcee: up and down projections, no gate."""
    out.linears += [
        LinearGroup("mlp.up_proj", hidden, intermediate, count),
        LinearGroup("mlp.down_proj", intermediate, hidden, count),
    ]
    if bias:
        out.biases += (intermediate + hidden) * count


def _gated_mlp(name: str, hidden: int, intermediate: int, count: int, out: ParamBreakdown, bias: bool) -> None:
    if count <= 0:
        return
    out.linears += [
        LinearGroup(f"{name}.gate_proj", hidden, intermediate, count),
        LinearGroup(f"{name}.up_proj", hidden, intermediate, count),
        LinearGroup(f"{name}.down_proj", intermediate, hidden, count),
    ]
    if bias:
        out.biases += (2 * intermediate + hidden) * count


def _is_moe_layer(config: dict[str, Any], index: int) -> bool:
    """Whether decoder layer `index` holds experts, by the rule of its architecture."""
    if "first_k_dense_replace" in config:  # DeepSeek: the first k layers are dense
        return index >= int(config.get("first_k_dense_replace") or 0)
    if "decoder_sparse_step" in config:  # qwen2_moe/qwen3_moe: every step-th layer, minus mlp_only_layers
        step = int(config.get("decoder_sparse_step") or 1)
        return (index + 1) % step == 0 and index not in set(config.get("mlp_only_layers") or [])
    return True  # Mixtral: every layer


def _mlp(arch: Architecture, config: dict[str, Any], out: ParamBreakdown) -> None:
    h, layers = arch.hidden_size, arch.num_layers
    bias = bool(config.get("mlp_bias") or config.get("use_bias"))
    if arch.model_type in PLAIN_MLP_MODEL_TYPES:
        _plain_mlp(h, arch.intermediate_size, layers, out, bias)
        return
    experts = int(config.get("n_routed_experts") or config.get("num_local_experts") or config.get("num_experts") or 0)
    if not experts:
        _gated_mlp("mlp", h, arch.intermediate_size, layers, out, bias)
        return
    moe_layers = sum(1 for index in range(layers) if _is_moe_layer(config, index))
    _gated_mlp("mlp", h, arch.intermediate_size, layers - moe_layers, out, bias)
    # Mixtral has no moe_intermediate_size: each expert is as wide as the dense MLP would be. Experts carry no bias.
    expert_width = int(config.get("moe_intermediate_size") or arch.intermediate_size)
    _gated_mlp("experts", h, expert_width, experts * moe_layers, out, False)
    shared = int(config.get("n_shared_experts") or 0)
    if shared:  # DeepSeek: the shared experts are one MLP n_shared times as wide
        _gated_mlp("shared_experts", h, expert_width * shared, moe_layers, out, bias)
    shared_width = int(config.get("shared_expert_intermediate_size") or 0)
    if shared_width:  # qwen2_moe: one shared expert plus a scalar gate on it
        _gated_mlp("shared_expert", h, shared_width, moe_layers, out, bias)
        out.router += h * moe_layers
    # The router's gate weight, kept 16-bit by quantizers. DeepSeek-V3's e_score_correction_bias is a buffer in
    # transformers, not a parameter, so it is not counted.
    out.router += experts * h * moe_layers


def count_parameters(config: dict[str, Any]) -> ParamBreakdown:
    """Parameter breakdown of a supported decoder-only transformer described by config.json."""
    arch = parse_architecture(config)
    config = with_defaults(config)
    out = ParamBreakdown(hidden_size=arch.hidden_size, num_layers=arch.num_layers)
    out.embedding = arch.vocab_size * arch.hidden_size
    out.lm_head = 0 if arch.tie_word_embeddings else arch.vocab_size * arch.hidden_size
    _attention(arch, config, out)
    _mlp(arch, config, out)
    # Norm weights: input and post-attention norms per layer (Gemma 2/3, GLM-4 and HyperCLOVA X with use_post_norm
    # add two around the MLP, Cohere 2 has one), and the final one.
    norms_per_layer = 2
    if arch.model_type in FOUR_NORM_MODEL_TYPES or (arch.model_type == "hyperclovax" and config.get("use_post_norm")):
        norms_per_layer = 4
    elif arch.model_type in ONE_NORM_MODEL_TYPES:
        norms_per_layer = 1
    out.norms += (norms_per_layer * arch.num_layers + 1) * arch.hidden_size
    return out

"""Bytes of a compressed-tensors checkpoint (llm-compressor's output), tensor by tensor, from its quantization_config.

The layouts follow compressed-tensors 0.19 (compressors/pack_quantized and naive_quantized,
quantization/lifecycle/initialize.py). For one quantized Linear of out_features n and in_features k:

- pack-quantized (int weights of 1-8 bits, e.g. W4A16): `weight_packed` int32 (n, ceil(k x bits / 32)), `weight_scale`
  (n, groups), `weight_shape` int64 (2,), and for asymmetric group/channel weights `weight_zero_point` int32 packed
  along the output dim (ceil(n x bits / 32), groups);
- float-quantized / int-quantized / naive-quantized (FP8, W8A8 INT8): `weight` at one byte per element, `weight_scale`,
  and for asymmetric weights a `weight_zero_point` shaped like the scale (int8 or the scale's dtype);
- scales take the model's dtype (float16 where that is not a float type): groups = ceil(k / group_size) for the group
  strategy, 1 per output row for channel, one scalar for tensor, (ceil(n / b0), ceil(k / b1)) for block;
- static (non-dynamic) input activations add an `input_scale` of one element (tensor strategy) per Linear;
- nvfp4-pack-quantized / mxfp4-pack-quantized: `weight_packed` uint8 (n, ceil(k / 2)), one-byte `weight_scale` per
  group of 16 (NVFP4, plus a float32 `weight_global_scale`) or 32 (MXFP4); mxfp8-quantized: one-byte weights and
  one-byte scales per group of 32;
- a kv_cache_scheme adds `k_scale` and `v_scale` per attention layer (one element each at the tensor strategy).

Modules in `ignore` and those no group targets (embeddings, norms, biases, MoE routers) stay at the model's dtype.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from deployments.sizing.params import LinearGroup, ParamBreakdown

PACK_QUANTIZED = "pack-quantized"
# 4-bit floats, two per uint8 along the input dim; NVFP4 adds one float32 global scale per Linear.
NVFP4 = "nvfp4-pack-quantized"
FP4_PACKED = frozenset({NVFP4, "mxfp4-pack-quantized"})
# Formats whose scales are one byte unless the config names a scale_dtype (NVFP4: fp8; MX: E8M0 exponents in uint8).
ONE_BYTE_SCALES = frozenset({*FP4_PACKED, "mxfp8-quantized"})
GLOBAL_SCALE_BYTES = 4
# int32 words of packed weights and zero points; the int64 (out, in) `weight_shape` of each packed Linear.
PACKED_WORD_BYTES = 4
WEIGHT_SHAPE_BYTES = 2 * 8
# Bytes of the unquantized tensors (and the scales) per torch_dtype; float32 checkpoints store 4.
DTYPE_BYTES = {
    "float32": 4,
    "float": 4,
    "float64": 8,
    "float16": 2,
    "half": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "uint8": 1,
    "int8": 1,
}
# The name of one module of each projection kind, as transformers names them, to match `targets` and `ignore`.
_LAYER_PREFIX = "model.layers.0."
_ATTENTION = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj"}
)
_LAYER_NUMBER = re.compile(r"\.layers\.\d+\.")


@dataclass(frozen=True)
class WeightScheme:
    """One config group: how its Linears' weights (and input activations) are quantized and stored."""

    targets: tuple[str, ...]
    format: str
    num_bits: int
    type: str  # "int" or "float"
    strategy: str  # group, channel, tensor or block
    group_size: int | None
    block: tuple[int, int] | None
    symmetric: bool
    static_input_scale: bool
    # The weights' own `scale_dtype` in bytes, where the config names one (else the model's dtype).
    scale_bytes: int | None = None

    @property
    def packed(self) -> bool:
        return self.format == PACK_QUANTIZED

    def scale_elements(self, k: int, n: int) -> int:
        """Elements of one Linear's weight_scale (and of an unpacked zero point)."""
        if self.strategy in ("group", "tensor_group") and self.group_size and self.group_size > 0:
            return n * math.ceil(k / self.group_size)
        if self.strategy == "block" and self.block:
            return math.ceil(n / self.block[0]) * math.ceil(k / self.block[1])
        if self.strategy == "tensor":
            return 1
        return n  # channel (and group_size -1, one group per row)

    def linear_bytes(self, k: int, n: int, dtype_bytes: int) -> int:
        """Stored bytes of one quantized Linear (out_features n, in_features k), its scales included."""
        scales = self.scale_elements(k, n)
        default_scale = 1 if self.format in ONE_BYTE_SCALES else dtype_bytes
        total = scales * (self.scale_bytes or default_scale)
        if self.format in FP4_PACKED:
            total += n * math.ceil(k / 2) + (GLOBAL_SCALE_BYTES if self.format == NVFP4 else 0)
            # NVFP4/MXFP4 activation scales are one float32 global scale when static.
            return total + (GLOBAL_SCALE_BYTES if self.static_input_scale else 0)
        if self.packed:
            total += n * math.ceil(k * self.num_bits / 32) * PACKED_WORD_BYTES + WEIGHT_SHAPE_BYTES
            if not self.symmetric:
                if self.strategy in ("group", "channel"):
                    groups = scales // n
                    total += math.ceil(n * self.num_bits / 32) * groups * PACKED_WORD_BYTES
                else:
                    total += scales  # an int8 zero point, left unpacked
        else:
            total += n * k * math.ceil(self.num_bits / 8)
            if not self.symmetric:
                total += scales * (1 if self.type == "int" else dtype_bytes)
        if self.static_input_scale:
            total += dtype_bytes
        return total


@dataclass(frozen=True)
class CompressedScheme:
    """A checkpoint's whole quantization_config, as far as bytes go."""

    groups: tuple[WeightScheme, ...]
    ignore: tuple[str, ...]
    kv_cache_fp8: bool
    dtype_bytes: int

    @property
    def main(self) -> WeightScheme | None:
        """The group that quantizes plain Linears (the last listing `Linear`, as compressed-tensors applies it),
        else the first: it names the checkpoint's format."""
        by_class = [group for group in self.groups if "Linear" in group.targets]
        return by_class[-1] if by_class else (self.groups[0] if self.groups else None)


def _format(qc: dict[str, Any], group: dict[str, Any], weights: dict[str, Any], activations: dict | None) -> str:
    """The group's own format, else the config's, else what compressed-tensors would pick for these arguments."""
    chosen = group.get("format") or qc.get("format")
    if chosen and chosen != "mixed-precision":
        return str(chosen)
    if weights.get("type") == "float":
        return "float-quantized"
    if activations is None and int(weights.get("num_bits") or 8) <= 8:
        return PACK_QUANTIZED
    return "int-quantized"


def _dtype_bytes(name: Any) -> int | None:
    """Bytes of a dtype as configs spell it ("bfloat16", "torch.float32"); None when unset or unknown."""
    return DTYPE_BYTES.get(str(name).removeprefix("torch.")) if name else None


def parse_scheme(qc: dict[str, Any], torch_dtype: str | None) -> CompressedScheme:
    """Read a compressed-tensors quantization_config (config groups, ignore, kv_cache_scheme)."""
    groups = []
    for group in (qc.get("config_groups") or {}).values():
        group = group or {}
        weights = group.get("weights") or {}
        if not weights:
            continue  # an activation-only group stores no weight tensors
        activations = group.get("input_activations")
        block = weights.get("block_structure")
        group_size = weights.get("group_size")
        strategy = str(weights.get("strategy") or ("group" if group_size else "tensor")).lower()
        groups.append(
            WeightScheme(
                targets=tuple(group.get("targets") or ("Linear",)),
                format=_format(qc, group, weights, activations),
                num_bits=int(weights.get("num_bits") or 8),
                type=str(weights.get("type") or "int"),
                strategy=strategy,
                group_size=int(group_size) if group_size else None,
                block=(int(block[0]), int(block[1])) if block else None,
                symmetric=bool(weights.get("symmetric", True)),
                static_input_scale=bool(activations) and not activations.get("dynamic", False),
                scale_bytes=_dtype_bytes(weights.get("scale_dtype")),
            )
        )
    kv = qc.get("kv_cache_scheme") or {}
    return CompressedScheme(
        groups=tuple(groups),
        ignore=tuple(str(entry) for entry in qc.get("ignore") or ()),
        kv_cache_fp8=bool(kv) and int(kv.get("num_bits") or 8) == 8 and kv.get("type", "float") == "float",
        dtype_bytes=_dtype_bytes(torch_dtype) or 2,
    )


def module_name(group: LinearGroup) -> str:
    """A representative transformers module name for a planner linear group (layer 0, expert 0)."""
    if group.name == "lm_head":
        return "lm_head"
    if group.name in _ATTENTION:
        return f"{_LAYER_PREFIX}self_attn.{group.name}"
    kind, _, proj = group.name.partition(".")
    if kind == "experts":
        return f"{_LAYER_PREFIX}mlp.experts.0.{proj}"
    if kind in ("shared_experts", "shared_expert"):
        return f"{_LAYER_PREFIX}mlp.{kind}.{proj}"
    return f"{_LAYER_PREFIX}mlp.{proj}"


def _matches(name: str, target: str) -> bool:
    """compressed-tensors' rule: `re:` entries are re.match'ed against the module name; others equal it (or, for
    `Linear`, name the class every projection here has)."""
    if target.startswith("re:"):
        return re.match(target.removeprefix("re:"), name) is not None
    return target in (name, "Linear")


def _ignored_instances(name: str, ignore: tuple[str, ...], count: int) -> int:
    """How many of the group's `count` modules `ignore` keeps unquantized: all for an entry matching the
    representative name, one per exact entry naming that module in one layer."""
    one_each = 0
    for entry in ignore:
        if entry.startswith("re:"):
            if _matches(name, entry):
                return count
        elif _LAYER_NUMBER.search(entry):
            one_each += _LAYER_NUMBER.sub(".layers.0.", entry) == name
        elif entry == name:
            return count
    return min(count, one_each)


def _scheme_for(name: str, scheme: CompressedScheme) -> WeightScheme | None:
    """The group quantizing a module, as compressed-tensors picks it (quantization/lifecycle/apply.py): each
    target belongs to the last group listing it; a name match (exact before `re:`) beats the class `Linear`."""
    by_target = {target: group for group in scheme.groups for target in group.targets}
    targets = sorted(by_target, key=lambda target: ("re:" in target, target))
    for target in targets:
        if target != "Linear" and _matches(name, target):
            return by_target[target]
    return by_target.get("Linear")


def weight_bytes(breakdown: ParamBreakdown, scheme: CompressedScheme) -> int:
    """Stored bytes of the whole checkpoint's weights: quantized Linears at their layout, the rest at the dtype."""
    width = scheme.dtype_bytes
    linears = list(breakdown.linears)
    if breakdown.lm_head and breakdown.hidden_size:
        linears.append(LinearGroup("lm_head", breakdown.hidden_size, breakdown.lm_head // breakdown.hidden_size))
    dense = breakdown.embedding + breakdown.norms + breakdown.biases + breakdown.router
    total = 0
    for group in linears:
        name = module_name(group)
        chosen = _scheme_for(name, scheme)
        kept = group.count if chosen is None else _ignored_instances(name, scheme.ignore, group.count)
        k, n = group.in_features, group.out_features
        total += kept * k * n * width
        if chosen is not None:
            total += (group.count - kept) * chosen.linear_bytes(k, n, width)
    if breakdown.extra_linear and scheme.main is not None:
        # Tensors the architecture does not describe (a vision tower...): at the main group's bytes per weight.
        per_weight = scheme.main.linear_bytes(4096, 4096, width) / (4096 * 4096)
        total += round(breakdown.extra_linear * per_weight)
    if scheme.kv_cache_fp8:
        total += 2 * breakdown.num_layers * width  # k_scale and v_scale of every attention layer
    return total + dense * width

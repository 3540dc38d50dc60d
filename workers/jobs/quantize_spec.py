"""A quantization job's spec: fields, defaults and checks, standard library only, so the console checks a form
with the same rules the program (workers/jobs/quantize.py) applies. A wrong field is `BadInput(field=...)`.

    {
      "source_model": "/models/org--name/<commit>",   a full-precision model directory (config.json, weights)
      "output_dir": "/jobs/quantize-3/model",          must not exist yet; written beside it and renamed into place
      "scheme": "W4A16_GPTQ",                          one of SCHEMES
      "group_size": 128,                               W4 schemes: 32, 64, 128, or -1 for one scale per channel
                                                       (checked, then ignored by the 8-bit schemes)
      "ignore": ["lm_head"],                           modules left in full precision
      "kv_cache_fp8": false,                           also an FP8 KV cache (schemes that allow it)
      "calibration": {"path": null, "samples": 64, "seq_len": 512},
                                                       JSONL (chat `messages`, prompt/completion or text); null:
                                                       the sample shipped in workers/jobs/data/
      "device": "cpu" | "cuda",
      "seed": 0
    }

The output is a compressed-tensors checkpoint (what llm-compressor writes; TGI, vLLM and serve.py load it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.jobs.protocol import BadInput

# The calibration sample shipped with the programs (about 300 rows of public-domain English prose).
DEFAULT_CALIBRATION = Path(__file__).resolve().parent / "data" / "calibration_sample.jsonl"
GROUP_SIZES = (32, 64, 128, -1)
DEVICES = ("cpu", "cuda")
SAMPLES_RANGE = (1, 4096)
SEQ_LEN_RANGE = (16, 16384)


@dataclass(frozen=True)
class Scheme:
    """What a scheme does and where it can run."""

    label: str
    weight_bits: int
    activation_bits: int
    needs_calibration: bool
    # None, or why it cannot run on a CPU (a sentence a user reads).
    cuda_only_reason: str | None
    allows_kv_cache_fp8: bool

    @property
    def grouped(self) -> bool:
        """Whether group_size applies (4-bit weights are quantized in groups along the input dimension)."""
        return self.weight_bits == 4


# Which schemes run on a CPU was measured with llm-compressor 0.14 and torch 2.13 (CPU build) on the tiny model.
SCHEMES: dict[str, Scheme] = {
    "W4A16_GPTQ": Scheme(
        label="4-bit weights, GPTQ (calibrated)",
        weight_bits=4,
        activation_bits=16,
        needs_calibration=True,
        cuda_only_reason=None,
        allows_kv_cache_fp8=True,
    ),
    "W4A16_AWQ": Scheme(
        label="4-bit weights, AWQ (activation-aware, calibrated)",
        weight_bits=4,
        activation_bits=16,
        needs_calibration=True,
        cuda_only_reason=(
            "llm-compressor's AWQ search pins its cached activations in page-locked memory for fast copies to a "
            "GPU, which needs a CUDA device."
        ),
        allows_kv_cache_fp8=False,
    ),
    "W4A16_RTN": Scheme(
        label="4-bit weights, round-to-nearest (no calibration)",
        weight_bits=4,
        activation_bits=16,
        needs_calibration=False,
        cuda_only_reason=None,
        allows_kv_cache_fp8=True,
    ),
    "FP8_DYNAMIC": Scheme(
        label="FP8 weights and dynamic FP8 activations (no calibration)",
        weight_bits=8,
        activation_bits=8,
        needs_calibration=False,
        cuda_only_reason=None,
        allows_kv_cache_fp8=True,
    ),
    "W8A8_INT8": Scheme(
        label="INT8 weights and activations, SmoothQuant + GPTQ (calibrated)",
        weight_bits=8,
        activation_bits=8,
        needs_calibration=True,
        cuda_only_reason=None,
        allows_kv_cache_fp8=True,
    ),
}


@dataclass(frozen=True)
class Calibration:
    path: str | None = None
    samples: int = 64
    seq_len: int = 512


@dataclass(frozen=True)
class QuantizeSpec:
    """A checked spec; group_size is None for schemes without groups."""

    source_model: str
    output_dir: str
    scheme: str
    group_size: int | None = 128
    ignore: tuple[str, ...] = ("lm_head",)
    kv_cache_fp8: bool = False
    calibration: Calibration = field(default_factory=Calibration)
    device: str = "cpu"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "source_model": self.source_model,
            "output_dir": self.output_dir,
            "scheme": self.scheme,
            "group_size": self.group_size,
            "ignore": list(self.ignore),
            "kv_cache_fp8": self.kv_cache_fp8,
            "calibration": {
                "path": self.calibration.path,
                "samples": self.calibration.samples,
                "seq_len": self.calibration.seq_len,
            },
            "device": self.device,
            "seed": self.seed,
        }

    @property
    def scheme_info(self) -> Scheme:
        return SCHEMES[self.scheme]

    @property
    def calibrated(self) -> bool:
        """Whether the run reads calibration data (the scheme needs it, or an FP8 KV cache needs its scales)."""
        return self.scheme_info.needs_calibration or self.kv_cache_fp8


FIELDS = (
    "source_model",
    "output_dir",
    "scheme",
    "group_size",
    "ignore",
    "kv_cache_fp8",
    "calibration",
    "device",
    "seed",
)
CALIBRATION_FIELDS = ("path", "samples", "seq_len")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _whole(raw: Any, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    if not _is_int(raw) or not low <= raw <= high:
        raise BadInput(f"{name} must be a whole number from {low} to {high}.", field=name)
    return raw


def _directory(raw: Any, name: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise BadInput(f"{name} is required: a directory.", field=name)
    return raw


def _calibration(raw: Any) -> Calibration:
    if raw is None:
        return Calibration()
    if not isinstance(raw, dict):
        raise BadInput("calibration must be an object with path, samples and seq_len.", field="calibration")
    unknown = sorted(set(raw) - set(CALIBRATION_FIELDS))
    if unknown:
        raise BadInput(f"Unknown calibration field {unknown[0]}.", field=f"calibration.{unknown[0]}")
    path = raw.get("path")
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise BadInput(
            "calibration.path must be a JSONL file, or null for the shipped sample.", field="calibration.path"
        )
    return Calibration(
        path=path,
        samples=_whole(raw.get("samples"), "calibration.samples", 64, *SAMPLES_RANGE),
        seq_len=_whole(raw.get("seq_len"), "calibration.seq_len", 512, *SEQ_LEN_RANGE),
    )


def parse_spec(raw: dict[str, Any]) -> QuantizeSpec:
    """The checked spec with defaults filled in; BadInput naming the first wrong field."""
    if not isinstance(raw, dict):
        raise BadInput("The spec must be a JSON object.", field="spec")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise BadInput(f"Unknown spec field {unknown[0]}.", field=unknown[0])
    source = _directory(raw.get("source_model"), "source_model")
    output = _directory(raw.get("output_dir"), "output_dir")
    name = raw.get("scheme")
    if name not in SCHEMES:
        what = "scheme is required" if name is None else f"Unknown scheme {name!r}"
        raise BadInput(f"{what}: one of {', '.join(SCHEMES)}.", field="scheme")
    scheme = SCHEMES[name]
    device = raw.get("device") or "cpu"
    if device not in DEVICES:
        raise BadInput(f"device must be one of {', '.join(DEVICES)}.", field="device")
    if device == "cpu" and scheme.cuda_only_reason:
        raise BadInput(
            f"{name} cannot run on a CPU: {scheme.cuda_only_reason}",
            field="scheme",
            next_step="Run it on a GPU, or choose a scheme that runs on a CPU.",
        )
    group_size = raw.get("group_size")
    group_size = 128 if group_size is None else group_size
    if not _is_int(group_size) or group_size not in GROUP_SIZES:
        raise BadInput("group_size must be 32, 64, 128, or -1 (one scale per channel).", field="group_size")
    if not scheme.grouped:
        group_size = None  # 8-bit schemes have one scale per channel (weights) or per token (activations)
    ignore = raw.get("ignore")
    if ignore is None:
        ignore = ["lm_head"]
    if not isinstance(ignore, list) or not all(isinstance(item, str) and item.strip() for item in ignore):
        raise BadInput("ignore must be a list of module names (e.g. lm_head).", field="ignore")
    kv_cache_fp8 = raw.get("kv_cache_fp8")
    kv_cache_fp8 = False if kv_cache_fp8 is None else kv_cache_fp8
    if not isinstance(kv_cache_fp8, bool):
        raise BadInput("kv_cache_fp8 must be true or false.", field="kv_cache_fp8")
    if kv_cache_fp8 and not scheme.allows_kv_cache_fp8:
        allowed = ", ".join(key for key, value in SCHEMES.items() if value.allows_kv_cache_fp8)
        raise BadInput(f"{name} cannot add an FP8 KV cache; these can: {allowed}.", field="kv_cache_fp8")
    seed = raw.get("seed")
    seed = 0 if seed is None else seed
    if not _is_int(seed) or not 0 <= seed < 2**32:
        raise BadInput("seed must be a whole number from 0 to 2**32 - 1.", field="seed")
    return QuantizeSpec(
        source_model=source,
        output_dir=output,
        scheme=name,
        group_size=group_size,
        ignore=tuple(ignore),
        kv_cache_fp8=kv_cache_fp8,
        calibration=_calibration(raw.get("calibration")),
        device=device,
        seed=seed,
    )


def source_quantization(config: dict[str, Any]) -> str | None:
    """The quantization method a model's config.json already has (gptq, awq, fp8, bitsandbytes,
    compressed-tensors, ...), or None for a full-precision model."""
    if not isinstance(config, dict):
        return None
    quantization = config.get("quantization_config")
    if isinstance(quantization, dict) and quantization:
        method = quantization.get("quant_method")
        if isinstance(method, str) and method:
            return method
        if "format" in quantization or "config_groups" in quantization:
            return "compressed-tensors"
        if quantization.get("load_in_4bit") or quantization.get("load_in_8bit"):
            return "bitsandbytes"
        return "unknown"
    # Early llm-compressor checkpoints wrote their quantization as compression_config.
    if isinstance(config.get("compression_config"), dict):
        return "compressed-tensors"
    return None


def check_source_config(config: dict[str, Any]) -> None:
    """BadInput (field source_model) when the source is already quantized: quantizing twice compounds the error
    and llm-compressor expects full-precision weights."""
    method = source_quantization(config)
    if method is not None:
        raise BadInput(
            f"The source model is already quantized ({method}); quantize a full-precision model.",
            cause="already_quantized",
            field="source_model",
            next_step="Choose the full-precision model this one was made from.",
        )


def group_size_problem(config: dict[str, Any], group_size: int | None) -> str | None:
    """Why `group_size` does not fit the model's layers, or None: every quantized Linear's input width must be a
    multiple of the group size (llm-compressor refuses otherwise). Read from config.json's widths."""
    if group_size is None or group_size <= 0 or not isinstance(config, dict):
        return None
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    widths = {"hidden_size": text.get("hidden_size"), "intermediate_size": text.get("intermediate_size")}
    heads, head_dim = text.get("num_attention_heads"), text.get("head_dim")
    if _is_int(heads) and _is_int(head_dim):
        widths["num_attention_heads x head_dim"] = heads * head_dim
    if _is_int(text.get("moe_intermediate_size")):
        widths["moe_intermediate_size"] = text["moe_intermediate_size"]
    for name, width in widths.items():
        if _is_int(width) and width % group_size:
            return (
                f"group_size {group_size} does not divide the model's {name} ({width}): every layer's input width "
                "must be a multiple of the group size. Choose a smaller group size or -1 (one scale per channel)."
            )
    return None


def calibration_rows_needed(spec: QuantizeSpec) -> int:
    """How many calibration rows the run reads: 0 when the scheme needs no calibration."""
    return spec.calibration.samples if spec.calibrated else 0


def calibration_path(spec: QuantizeSpec) -> Path:
    """The calibration file the run reads (the shipped sample when the spec names none)."""
    return Path(spec.calibration.path) if spec.calibration.path else DEFAULT_CALIBRATION

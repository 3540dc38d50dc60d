"""Deployment specs: cleaning and checking what a user asks for, and the exact command line a spec will run.
Read-only: nothing here writes. Where a spec runs is deployments.serving.planning."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings

from console.errors import ApplicationError
from deployments.backends.tgi import launch as tgi
from deployments.models import AllowedImage, DeploymentSpec, Gpu, ModelArtifact
from deployments.serving.planning import Verdict

# The fields of a spec a user sets (everything else is bookkeeping).
SPEC_FIELDS = (
    "artifact",
    "backend",
    "image",
    "quantize",
    "dtype",
    "kv_cache_dtype",
    "device",
    "num_shard",
    "gpu_indexes",
    "max_input_tokens",
    "max_total_tokens",
    "max_batch_prefill_tokens",
    "max_concurrent_requests",
    "cuda_memory_fraction",
    "lora_adapters",
    "extra_env",
    "credential",
)
PRE_QUANTIZED = {"awq", "gptq", "marlin", "compressed-tensors"}
# TGI: --dtype cannot be combined with --quantize, except the bitsandbytes variants.
DTYPE_WITH_QUANTIZE = {"bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4"}


def spec_values(spec: DeploymentSpec) -> dict:
    """A spec as plain values (foreign keys as ids), for diffs and for copying into a new version."""
    values = {}
    for name in SPEC_FIELDS:
        field = DeploymentSpec._meta.get_field(name)
        values[name] = getattr(spec, field.attname)
    return values


def _checkpoint_quantization(artifact: ModelArtifact) -> str | None:
    try:
        config = json.loads((Path(artifact.path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    method = (config.get("quantization_config") or {}).get("quant_method")
    return str(method).lower() if method else None


def clean_spec(data: dict) -> dict:
    """Check a spec's values against each other, the checkpoint, the allow-lists and the host. Returns the
    cleaned values or raises ApplicationError naming the field at fault."""
    values = {name: data.get(name) for name in SPEC_FIELDS if name in data}
    artifact = values.get("artifact")
    if isinstance(artifact, int | str):
        artifact = ModelArtifact.objects.filter(pk=artifact).select_related("host", "repo").first()
    if artifact is None:
        raise ApplicationError("Choose a model.", field="artifact")
    if artifact.status not in (
        ModelArtifact.Status.READY,
        ModelArtifact.Status.DOWNLOADING,
        ModelArtifact.Status.PENDING,
    ):
        raise ApplicationError(
            f"{artifact} is {artifact.get_status_display()}; add or import the model again.", field="artifact"
        )
    values["artifact"] = artifact
    values.setdefault("backend", DeploymentSpec.Backend.TGI)
    values["device"] = values.get("device") or DeploymentSpec.Device.GPU
    values["quantize"] = values.get("quantize") or ""
    values["dtype"] = values.get("dtype") or ""
    values["kv_cache_dtype"] = values.get("kv_cache_dtype") or ""
    values["image"] = (values.get("image") or "").strip()
    values["extra_env"] = values.get("extra_env") or {}
    values["lora_adapters"] = values.get("lora_adapters") or []
    values["gpu_indexes"] = sorted({int(i) for i in values.get("gpu_indexes") or []})
    values.setdefault("max_concurrent_requests", 128)
    values["cuda_memory_fraction"] = values.get("cuda_memory_fraction") or 1.0

    stored = _checkpoint_quantization(artifact) if artifact.status == ModelArtifact.Status.READY else None
    quantize = values["quantize"]
    if quantize and quantize not in DeploymentSpec.Quantize.values:
        raise ApplicationError(f"Unknown quantization {quantize}.", field="quantize")
    if quantize in PRE_QUANTIZED and stored != quantize and not (quantize == "marlin" and stored in ("gptq", "awq")):
        raise ApplicationError(
            f"{quantize} needs a checkpoint quantized with {quantize}; this one is "
            f"{stored or 'not quantized'}. Pick a pre-quantized repo, or an on-the-fly method (bitsandbytes, eetq, "
            "fp8).",
            field="quantize",
        )
    if quantize and quantize not in PRE_QUANTIZED and stored:
        raise ApplicationError(
            f"The checkpoint is already quantized ({stored}); leave quantization empty or choose {stored}.",
            field="quantize",
        )
    if values["dtype"] and quantize and quantize not in DTYPE_WITH_QUANTIZE:
        raise ApplicationError(
            "TGI cannot combine a dtype with this quantization (only the bitsandbytes variants "
            "take both); leave dtype empty.",
            field="dtype",
        )
    low, high = values.get("max_input_tokens"), values.get("max_total_tokens")
    if low and high and low >= high:
        raise ApplicationError(
            f"Max input tokens ({low}) must be less than max total tokens ({high}).", field="max_input_tokens"
        )
    prefill = values.get("max_batch_prefill_tokens")
    if prefill and low and prefill < low:
        raise ApplicationError(
            f"Max batch prefill tokens ({prefill}) must be at least max input tokens ({low}).",
            field="max_batch_prefill_tokens",
        )
    if not 0.05 <= float(values["cuda_memory_fraction"]) <= 1.0:
        raise ApplicationError("The CUDA memory fraction is between 0.05 and 1.", field="cuda_memory_fraction")
    if not isinstance(values["extra_env"], dict):
        raise ApplicationError('Extra environment is an object: {"NAME": "value"}.', field="extra_env")
    refused = sorted(set(values["extra_env"]) - tgi.ALLOWED_ENV)
    if refused:
        raise ApplicationError(
            f"Not allowed: {', '.join(refused)}. Allowed: {', '.join(sorted(tgi.ALLOWED_ENV))}.", field="extra_env"
        )
    _check_adapters(values["lora_adapters"])
    host = artifact.host
    if values["device"] == DeploymentSpec.Device.CPU:
        values["gpu_indexes"], values["num_shard"] = [], None
    elif values["gpu_indexes"]:
        known = set(Gpu.objects.filter(host=host).values_list("index", flat=True))
        missing = sorted(set(values["gpu_indexes"]) - known)
        if missing:
            raise ApplicationError(f"{host} has no GPU {', '.join(map(str, missing))}.", field="gpu_indexes")
        if values.get("num_shard") and values["num_shard"] != len(values["gpu_indexes"]):
            raise ApplicationError(
                f"num_shard {values['num_shard']} differs from the {len(values['gpu_indexes'])} GPUs chosen.",
                field="num_shard",
            )
    if host.runtime == host.Runtime.DOCKER or values["image"]:
        image = values["image"] or tgi.DEFAULT_IMAGE
        if not AllowedImage.objects.filter(reference=image).exists():
            raise ApplicationError(
                f"{image} is not on the allowed images list; an admin adds it under Deployments → Images.",
                field="image",
            )
    return values


def _check_adapters(adapters) -> None:
    if not isinstance(adapters, list):
        raise ApplicationError('LoRA adapters are a list: [{"name": "...", "path": "..."}].', field="lora_adapters")
    store = Path(settings.MODEL_STORE).resolve()
    for adapter in adapters:
        name = adapter.get("name", "") if isinstance(adapter, dict) else ""
        if not name or not all(c.isalnum() or c in "-_./" for c in name):
            raise ApplicationError("Each adapter needs a name (letters, digits, - _ . /).", field="lora_adapters")
        path = adapter.get("path")
        if path and store not in Path(path).resolve().parents:
            raise ApplicationError(
                f"Adapter {name}: local adapters live in the model store ({store}).", field="lora_adapters"
            )


def command_preview(values: dict, plan: Verdict, *, name: str = "<name>") -> list[str]:
    """The exact launcher command line the spec runs (placement as planned; a native port shown as PORT)."""
    from types import SimpleNamespace

    artifact: ModelArtifact = values["artifact"]
    spec = SimpleNamespace(**{field: values.get(field) for field in SPEC_FIELDS})
    docker = artifact.host.runtime == artifact.host.Runtime.DOCKER
    launch = tgi.launch_plan(
        docker=docker,
        model_dir=artifact.path,
        model_store=artifact.host.model_store or str(settings.MODEL_STORE),
        num_shard=plan.num_shard or 1,
        instance=f"llmdeploy-{name}",
        bind_address=settings.DEPLOY_BIND_ADDRESS,
    )
    return tgi.command_line(spec, launch, port_shown=None if docker else "PORT")

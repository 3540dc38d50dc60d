"""Deployment specs: cleaning and checking what a user asks for, and the exact command line a spec will run.
Read-only: nothing here writes. Where a spec runs is deployments.serving.planning."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

from django.conf import settings

from console.accounts.models import Credential
from console.errors import ApplicationError
from deployments.backends import BACKENDS, get_backend
from deployments.backends.base import Backend, SpecError
from deployments.models import DeploymentSpec, Gpu, Host, ModelArtifact
from deployments.registry.layout import artifact_dir
from deployments.serving.images import image_refused
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
    "replicas",
    "max_concurrent_requests",
    "cuda_memory_fraction",
    "gpu_memory_utilization",
    "max_model_len",
    "max_num_seqs",
    "max_num_batched_tokens",
    "lora_adapters",
    "extra_env",
    "credential",
)


def spec_values(spec: DeploymentSpec) -> dict:
    """A spec as plain values (foreign keys as ids), for diffs and for copying into a new version."""
    values = {}
    for name in SPEC_FIELDS:
        field = DeploymentSpec._meta.get_field(name)
        values[name] = getattr(spec, field.attname)
    return values


def _checkpoint(artifact: ModelArtifact) -> dict:
    """What the checkpoint says of itself, for the backends' checks: its quantization method and its config
    (the text model's part of a multimodal one). Empty until the files are here."""
    if artifact.status != ModelArtifact.Status.READY:
        return {"quantization": None, "config": {}}
    try:
        config = json.loads((Path(artifact.path) / "config.json").read_text())
    except (OSError, ValueError):
        return {"quantization": None, "config": {}}
    if not isinstance(config, dict):
        return {"quantization": None, "config": {}}
    method = (config.get("quantization_config") or {}).get("quant_method")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    return {"quantization": str(method).lower() if method else None, "config": {**config, **text}}


# The fields one backend reads and another does not (Backend.spec_fields), with the value that means "not set".
def _backend_fields() -> frozenset[str]:
    return frozenset().union(*(backend.spec_fields for backend in BACKENDS.values()))


def _unset(name: str, value) -> bool:
    """Whether a field holds nothing a backend would act on: empty, or the model's default (a spec switching
    backend keeps TGI's max_concurrent_requests=128 and cuda_memory_fraction=1.0, which vLLM need not refuse)."""
    if value in (None, "", [], {}):
        return True
    default = DeploymentSpec._meta.get_field(name).get_default()
    return default not in (None, "", [], {}) and value == default


def _check_backend_fields(values: dict, backend: Backend) -> None:
    """A spec that sets a field its backend does not read is refused, naming the field: it would be silently
    ignored at launch."""
    for name in SPEC_FIELDS:
        if name in _backend_fields() and name not in backend.spec_fields and not _unset(name, values.get(name)):
            owners = [other.label for other in BACKENDS.values() if name in other.spec_fields]
            raise ApplicationError(
                f"{name} is a {' and '.join(owners)} setting; {backend.label} does not take it. Leave it empty.",
                field=name,
            )


def clean_spec(data: dict) -> dict:
    """Check a spec's values against each other, the checkpoint, the allow-lists and the host, with the checks
    the spec's backend contributes. Returns the cleaned values or raises ApplicationError naming the field."""
    values = _normalized(data)
    artifact: ModelArtifact = values["artifact"]
    try:
        backend = get_backend(values["backend"])
    except KeyError:
        raise ApplicationError(f"Unknown backend {values['backend']}.", field="backend") from None
    if values["quantize"] and values["quantize"] not in DeploymentSpec.Quantize.values:
        raise ApplicationError(f"Unknown quantization {values['quantize']}.", field="quantize")
    _check_backend_fields(values, backend)
    checkpoint = _checkpoint(artifact)
    values["quantize"] = values["quantize"] or backend.default_quantize(values, checkpoint)
    try:
        backend.check_spec(values, checkpoint)
    except SpecError as error:
        raise ApplicationError(error.message, field=error.field) from None
    _check_adapters(values["lora_adapters"])
    _check_gpus(values, artifact.host)
    _check_image(values, artifact.host, backend)
    return values


def _artifact(value) -> ModelArtifact:
    artifact = value
    if isinstance(value, int | str):
        artifact = ModelArtifact.objects.filter(pk=value).select_related("host", "repo").first()
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
    return artifact


def _normalized(data: dict) -> dict:
    """The spec's fields with their defaults filled in (empty text for unset choices)."""
    values = {name: data.get(name) for name in SPEC_FIELDS if name in data}
    values["artifact"] = _artifact(values.get("artifact"))
    values["backend"] = values.get("backend") or DeploymentSpec.Backend.TGI
    values["device"] = values.get("device") or DeploymentSpec.Device.GPU
    for name in ("quantize", "dtype", "kv_cache_dtype"):
        values[name] = values.get(name) or ""
    values["image"] = (values.get("image") or "").strip()
    values["extra_env"] = values.get("extra_env") or {}
    values["lora_adapters"] = values.get("lora_adapters") or []
    values["gpu_indexes"] = _gpu_indexes(values.get("gpu_indexes"))
    values.setdefault("max_concurrent_requests", 128)
    values["replicas"] = _replicas(values.get("replicas"))
    values["cuda_memory_fraction"] = values.get("cuda_memory_fraction") or 1.0
    if "credential" in values:
        values["credential"] = _credential(values["credential"])
    return values


def _credential(value) -> Credential | None:
    """The Hub token a server reads its gated model with, by id or as an object (it reaches the server as a
    file; see the serve job)."""
    if value in (None, ""):
        return None
    if isinstance(value, Credential):
        return value
    found = Credential.objects.filter(pk=value, kind=Credential.Kind.HF_TOKEN).first() if str(value).isdigit() else None
    if found is None:
        raise ApplicationError("No such Hugging Face token.", field="credential")
    return found


def _replicas(raw) -> int:
    """How many servers of the spec run, 1 to 8 (empty: one)."""
    if raw in (None, ""):
        return 1
    try:
        count = int(raw)
    except (TypeError, ValueError):
        count = 0
    if isinstance(raw, bool) or count < 1 or count > 8 or str(count) != str(raw).strip():
        raise ApplicationError("Replicas is a whole number from 1 to 8.", field="replicas")
    return count


def _gpu_indexes(raw) -> list[int]:
    """GPU indexes as a sorted list of distinct whole numbers (a field error for anything else)."""
    if raw in (None, ""):
        return []
    items = raw if isinstance(raw, list | tuple) else None
    if items is None or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items):
        if items is not None and all(isinstance(i, str) and i.strip().isdigit() for i in items):
            return sorted({int(i) for i in items})  # from a form: ["0", "1"]
        raise ApplicationError("GPU indexes are a list of GPU numbers, e.g. [0, 1].", field="gpu_indexes")
    return sorted(set(items))


def _check_gpus(values: dict, host: Host) -> None:
    """GPUs chosen by hand belong to the host holding the copy, and agree with num_shard."""
    if values["device"] == DeploymentSpec.Device.CPU:
        values["gpu_indexes"], values["num_shard"] = [], None
        return
    if not values["gpu_indexes"]:
        return
    known = set(Gpu.objects.filter(host=host).values_list("index", flat=True))
    missing = sorted(set(values["gpu_indexes"]) - known)
    if missing:
        raise ApplicationError(f"{host} has no GPU {', '.join(map(str, missing))}.", field="gpu_indexes")
    if values.get("num_shard") and values["num_shard"] != len(values["gpu_indexes"]):
        raise ApplicationError(
            f"num_shard {values['num_shard']} differs from the {len(values['gpu_indexes'])} GPUs chosen.",
            field="num_shard",
        )


def _check_image(values: dict, host: Host, backend: Backend) -> None:
    """Containers run allowed images only (the backend's default too)."""
    refused = image_refused(image=values["image"], default=backend.default_image, host=host)
    if refused:
        raise ApplicationError(
            f"{refused} is not on the allowed images list; an admin adds it under Deployments → Images.",
            field="image",
        )


# TGI splits --lora-adapters on "," and "=", and treats a bare id as a path: names are plain identifiers and
# every adapter is a directory inside the model store.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ADAPTER_PATH_REFUSED = ",=@"


def _check_adapters(adapters) -> None:
    if not isinstance(adapters, list):
        raise ApplicationError('LoRA adapters are a list: [{"name": "...", "path": "..."}].', field="lora_adapters")
    store = Path(os.path.realpath(settings.MODEL_STORE))
    for adapter in adapters:
        name = adapter.get("name") if isinstance(adapter, dict) else None
        if not isinstance(name, str) or not ADAPTER_NAME.match(name):
            raise ApplicationError(
                "Each adapter needs a name of letters, digits, - _ and . (no slashes).", field="lora_adapters"
            )
        path = adapter.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ApplicationError(f"Adapter {name}: give its directory in the model store.", field="lora_adapters")
        if any(c in path for c in ADAPTER_PATH_REFUSED):
            raise ApplicationError(
                f"Adapter {name}: a path cannot hold any of {' '.join(ADAPTER_PATH_REFUSED)}.", field="lora_adapters"
            )
        if store not in Path(os.path.realpath(path)).parents:
            raise ApplicationError(
                f"Adapter {name}: adapters live in the model store ({store}).", field="lora_adapters"
            )


def command_preview(values: dict, plan: Verdict, *, name: str = "<name>") -> list[str]:
    """The exact launcher command line the spec runs where the planner placed it (a native port shown as PORT;
    on a host the files are still to be fetched to, the path they will have there)."""
    artifact: ModelArtifact = values["artifact"]
    host = artifact.host if plan.host == artifact.host.name else Host.objects.get(name=plan.host)
    store = host.model_store or str(settings.MODEL_STORE)
    model_dir = artifact.path if host == artifact.host else str(artifact_dir(store, artifact.repo))
    spec = SimpleNamespace(**{field: values.get(field) for field in SPEC_FIELDS})
    backend = get_backend(values["backend"])
    docker = host.runtime == host.Runtime.DOCKER
    launch = backend.launch_plan(
        docker=docker,
        model_dir=model_dir,
        model_store=store,
        num_shard=plan.num_shard or 1,
        instance=f"llmdeploy-{name}",
        bind_address=settings.DEPLOY_BIND_ADDRESS,
    )
    return backend.command_line(spec, launch, port_shown=None if docker else "PORT")

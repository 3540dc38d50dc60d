"""What the deploy form offers per serving backend: the fields each backend reads (`Backend.spec_fields`) and the
quantization and KV cache values its launcher accepts (its flag table). A field only another backend reads is
hidden by the page's script and ignored by the server, so switching backend never trips over a leftover value."""

from __future__ import annotations

from functools import cache
from types import SimpleNamespace
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from deployments.backends import BACKENDS
from deployments.models import DeploymentSpec

# The spec fields that depend on the backend (placement, image, replicas and token are every backend's).
BACKEND_FIELDS = tuple(
    field.name
    for field in DeploymentSpec._meta.concrete_fields
    if any(field.name in backend.spec_fields for backend in BACKENDS.values())
)
# The launcher flags that take a choice field's value (TGI says --quantize, vLLM --quantization).
CHOICE_FLAGS = {
    "quantize": ("--quantize", "--quantization"),
    "dtype": ("--dtype",),
    "kv_cache_dtype": ("--kv-cache-dtype",),
}


def vllm_field(name: str) -> forms.Field:
    """A fresh form field for one of vLLM's spec settings, with the one label, bounds and help the deploy form and
    the VRAM planner page both show."""
    if name == "gpu_memory_utilization":
        return forms.FloatField(
            label=_("GPU memory utilization"),
            required=False,
            min_value=0.05,
            max_value=1.0,
            help_text=_(
                "The share of each GPU vLLM reserves at start for weights, activations and KV cache. Empty: 0.9."
            ),
        )
    if name == "max_model_len":
        return forms.IntegerField(
            label=_("Max model length"), required=False, min_value=1, help_text=_("Prompt plus output, in tokens.")
        )
    if name == "max_num_seqs":
        return forms.IntegerField(label=_("Max sequences per batch"), required=False, min_value=1)
    if name == "max_num_batched_tokens":
        return forms.IntegerField(label=_("Max batched tokens"), required=False, min_value=1)
    raise KeyError(name)


def registered() -> list[tuple[str, str]]:
    """The backend choices the console can launch now (DeploymentSpec.Backend, as far as BACKENDS has them)."""
    return [(value, label) for value, label in DeploymentSpec.Backend.choices if value in BACKENDS]


def readers(name: str) -> list[str]:
    """The backends that read a spec field (all of them for a field no backend calls its own)."""
    if name not in BACKEND_FIELDS:
        return list(BACKENDS)
    return [key for key, backend in BACKENDS.items() if name in backend.spec_fields]


def reads(backend: str, name: str) -> bool:
    return backend in readers(name)


def unset_value(name: str) -> Any:
    """A field's value when its backend does not read it: empty, or the model's default where it has no empty."""
    field = DeploymentSpec._meta.get_field(name)
    return None if field.null else field.get_default()


def offered_values(backend: str, name: str) -> set[str]:
    """The values of a choice field the backend can launch with: those its argument builder turns into a value
    its launcher's flag accepts (vLLM spells TGI's fp8_e4m3fn fp8_e4m3, and has no bitsandbytes or EETQ). The
    empty choice ("the server's default") is always offered."""
    return _offered(backend)[name]


@cache
def _offered(backend: str) -> dict[str, set[str]]:
    server, table = BACKENDS[backend], BACKENDS[backend].flags.flags
    plan = server.launch_plan(
        docker=False, model_dir="/models/m", model_store="/models", num_shard=1, instance="form", bind_address="::1"
    )
    offered = {}
    for name, flags in CHOICE_FLAGS.items():
        offered[name] = {""}
        for value, _label in DeploymentSpec._meta.get_field(name).get_choices(include_blank=False):
            args = server.launcher_args(_probe_spec(**{name: value}), plan)
            given = [(arg, args[i + 1]) for i, arg in enumerate(args[:-1]) if arg in flags]
            if given and all(item in (table[flag].get("choices") or [item]) for flag, item in given):
                offered[name].add(value)
    return offered


def _probe_spec(**values: Any) -> SimpleNamespace:
    """A spec on a GPU with every other field unset, for the argument builders."""
    spec = {field.name: unset_value(field.name) for field in DeploymentSpec._meta.concrete_fields}
    return SimpleNamespace(**{**spec, "device": DeploymentSpec.Device.GPU, "artifact": None, **values})


def option_backends(name: str, values: list[str]) -> dict[str, str]:
    """For each value of a choice field, the backends offering it ("tgi vllm"), for the page's script."""
    offered = {key: offered_values(key, name) for key in BACKENDS}
    return {value: " ".join(key for key, allowed in offered.items() if value in allowed) for value in values if value}


class BackendSelect(forms.Select):
    """A select whose options name the backends offering them (data-backends), so the page shows only the chosen
    backend's values; without the script every value shows and the server refuses one the backend lacks."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.offered: dict[str, str] = {}

    def create_option(self, name, value, *args, **kwargs):
        option = super().create_option(name, value, *args, **kwargs)
        if str(value) in self.offered:
            option["attrs"]["data-backends"] = self.offered[str(value)]
        return option

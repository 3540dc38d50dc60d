"""Inventory forms. Memory is entered in GB (10^9 bytes) and stored in bytes."""

from __future__ import annotations

import json
from decimal import Decimal

from django import forms
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from console.accounts.models import Credential
from console.errors import invalid_json
from console.forms import StyledMixin
from deployments.backends import BACKENDS
from deployments.models import DeploymentSpec, Gpu, Host
from deployments.serving import form_backends
from deployments.serving.form_backends import BackendSelect
from deployments.units import GB


class LabelsField(forms.CharField):
    """Labels as JSON text ({"zone": "rack-2"}) or key=value pairs separated by commas."""

    def to_python(self, value):
        value = (super().to_python(value) or "").strip()
        if not value:
            return {}
        if value.startswith("{"):
            try:
                labels = json.loads(value)
            except json.JSONDecodeError as exc:
                raise forms.ValidationError(invalid_json(exc)) from None
        else:
            pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
            if any(len(pair) != 2 for pair in pairs):
                raise forms.ValidationError(_("Write key=value pairs separated by commas, or a JSON object."))
            labels = {key.strip(): val.strip() for key, val in pairs}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise forms.ValidationError(_("Labels map names to text values."))
        return labels

    def prepare_value(self, value):
        if isinstance(value, dict):
            return ", ".join(f"{k}={v}" for k, v in value.items())
        return value


class HostForm(StyledMixin, forms.ModelForm):
    labels = LabelsField(label=_("Labels"), required=False, help_text=_("e.g. zone=rack-2, tier=prod"))

    class Meta:
        model = Host
        fields = ["name", "address", "labels", "runtime", "model_store", "status"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Online/offline come from the agent's heartbeats; people set only these two.
        self.fields["status"].choices = [
            (Host.Status.MANUAL, Host.Status.MANUAL.label),
            (Host.Status.MAINTENANCE, Host.Status.MAINTENANCE.label),
        ]
        if self.instance.pk and self.instance.status not in (Host.Status.MANUAL, Host.Status.MAINTENANCE):
            self.fields["status"].choices.insert(0, (self.instance.status, self.instance.get_status_display()))


class GpuForm(StyledMixin, forms.ModelForm):
    memory_gb = forms.DecimalField(
        label=_("Memory (GB)"),
        min_value=Decimal("0.1"),
        max_digits=8,
        decimal_places=2,
        help_text=_("10^9 bytes, as the planner counts."),
    )

    class Meta:
        model = Gpu
        fields = [
            "index",
            "name",
            "memory_gb",
            "power_limit_w",
            "compute_capability",
            "nvlink_group",
            "uuid",
            "serial",
            "health",
        ]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["memory_gb"].initial = round(Decimal(self.instance.memory_total) / GB, 2)

    def service_fields(self) -> dict:
        data = {name: value for name, value in self.cleaned_data.items() if name != "memory_gb"}
        data["memory_total"] = int(self.cleaned_data["memory_gb"] * GB)
        return data


# The planner page's limits: True for those of backends that reserve a share of each GPU (vLLM), False for those
# of backends that fill it (TGI's token limits).
SIZING_LIMITS = {
    "max_total_tokens": False,
    "max_batch_total_tokens": False,
    "gpu_memory_utilization": True,
    "max_model_len": True,
    "max_num_seqs": True,
    "max_num_batched_tokens": True,
}
# Choice fields whose values depend on the backend (the deploy form's offer, form_backends.offered_values).
SIZING_CHOICES = ("quantize", "kv_cache_dtype")


def sizing_readers(reserves: bool) -> list[str]:
    """The backends whose memory works as `reserves` says (MemorySemantics.reserves)."""
    return [key for key, backend in BACKENDS.items() if backend.memory.reserves == reserves]


class SizingForm(StyledMixin, forms.Form):
    """What the VRAM planner needs; everything but the model has the chosen backend's defaults. The token limits
    are TGI's, the share and batch limits vLLM's: only the chosen backend's show (the page's script hides the
    others) and a value left in another backend's field is ignored, as on the deploy form."""

    source = forms.CharField(
        label=_("Model"),
        max_length=300,
        help_text=_("A Hugging Face repo id (deepseek-ai/deepseek-llm-7b-base) or a directory in the model store."),
    )
    revision = forms.CharField(
        label=_("Revision"), max_length=100, required=False, help_text=_("Branch, tag or commit; empty: main.")
    )
    backend = forms.ChoiceField(
        label=_("Serving backend"),
        choices=form_backends.registered,
        initial=DeploymentSpec.Backend.TGI,
        required=False,  # empty: TGI, as before there was a choice
        help_text=_("The inference server; the limits below are the chosen one's own."),
    )
    quantize = forms.ChoiceField(
        label=_("Quantization"),
        required=False,
        choices=[
            ("", _("as stored")),
            ("awq", "AWQ"),
            ("gptq", "GPTQ"),
            ("bitsandbytes", "bitsandbytes (int8)"),
            ("bitsandbytes-nf4", "bitsandbytes nf4"),
            ("eetq", "EETQ (int8)"),
            ("fp8", "FP8"),
        ],
        widget=BackendSelect,
    )
    max_total_tokens = forms.IntegerField(label=_("Max total tokens"), required=False, min_value=2, max_value=1_048_576)
    max_batch_total_tokens = forms.IntegerField(
        label=_("Max batch total tokens"), required=False, min_value=2, max_value=16_777_216
    )
    # vLLM's settings, with the deploy form's labels and bounds (deployments/serving/forms.py).
    gpu_memory_utilization = form_backends.vllm_field("gpu_memory_utilization")
    max_model_len = form_backends.vllm_field("max_model_len")
    max_num_seqs = form_backends.vllm_field("max_num_seqs")
    max_num_batched_tokens = form_backends.vllm_field("max_num_batched_tokens")
    kv_cache_dtype = forms.ChoiceField(
        label=_("KV cache"),
        required=False,
        choices=[("", _("same as the model")), ("fp8_e4m3fn", "FP8 (e4m3fn)"), ("fp8_e5m2", "FP8 (e5m2)")],
        widget=BackendSelect,
    )
    credential = forms.ModelChoiceField(
        label=_("Hugging Face token"), required=False, queryset=None, help_text=_("For gated or private repos.")
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)

        self.fields["credential"].queryset = Credential.objects.filter(kind=Credential.Kind.HF_TOKEN)
        for name in SIZING_CHOICES:
            values = [str(value) for value, _label in self.fields[name].choices]
            self.fields[name].widget.offered = form_backends.option_backends(name, values)
        chosen = self.chosen_backend()
        for name, reserves in SIZING_LIMITS.items():  # read by templates/serving/_field.html
            readers = sizing_readers(reserves)
            field = self.fields[name]
            field.gated, field.backends = True, " ".join(readers)
            field.hidden_for_backend = chosen not in readers
            # Without the page's script every field shows: each says whose it is.
            field.backend_note = ", ".join(BACKENDS[key].label for key in readers)

    def chosen_backend(self) -> str:
        """The backend to plan for: the one asked for, TGI when nothing says."""
        if self.is_bound:
            return self.data.get(self.add_prefix("backend")) or DeploymentSpec.Backend.TGI
        return self.initial.get("backend") or DeploymentSpec.Backend.TGI

    def full_clean(self) -> None:
        # Another backend's limits are dropped before they are checked: a value typed before switching backend
        # (or sent by a browser without the page's script) neither fails the form nor reaches the planner.
        backend = self.chosen_backend()
        if self.is_bound and backend in BACKENDS:
            data = self.data.copy()
            for name, reserves in SIZING_LIMITS.items():
                if backend not in sizing_readers(reserves):
                    data[self.add_prefix(name)] = ""
            self.data = data
        super().full_clean()

    def clean(self):
        data = super().clean()
        total, batch = data.get("max_total_tokens"), data.get("max_batch_total_tokens")
        if total and batch and batch < total:
            self.add_error("max_batch_total_tokens", _("Must be at least max total tokens (one full request)."))
        backend = data.get("backend") or DeploymentSpec.Backend.TGI
        for name in SIZING_CHOICES:
            if data.get(name) and backend in BACKENDS and data[name] not in form_backends.offered_values(backend, name):
                self.add_error(
                    name,
                    gettext("%(backend)s does not offer %(value)s.")
                    % {"backend": BACKENDS[backend].label, "value": data[name]},
                )
        return data

    def plan_arguments(self) -> dict:
        """The cleaned values as `deployments.inventory.sizing.plan` takes them."""
        data = self.cleaned_data
        return {
            "source": data["source"],
            "revision": data["revision"],
            "backend": data.get("backend") or DeploymentSpec.Backend.TGI,
            "quantize": data["quantize"],
            "kv_cache_dtype": data["kv_cache_dtype"],
            "credential_id": data["credential"].pk if data["credential"] else None,
            **{name: data.get(name) for name in SIZING_LIMITS},
        }

"""Inventory forms. Memory is entered in GB (10^9 bytes) and stored in bytes."""

from __future__ import annotations

import json
from decimal import Decimal

from django import forms
from django.utils.translation import gettext_lazy as _

from console.accounts.models import Credential
from console.errors import invalid_json
from console.forms import StyledMixin
from deployments.models import Gpu, Host
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


class SizingForm(StyledMixin, forms.Form):
    """What the VRAM planner needs; everything but the model has TGI's defaults."""

    source = forms.CharField(
        label=_("Model"),
        max_length=300,
        help_text=_("A Hugging Face repo id (deepseek-ai/deepseek-llm-7b-base) or a directory in the model store."),
    )
    revision = forms.CharField(
        label=_("Revision"), max_length=100, required=False, help_text=_("Branch, tag or commit; empty: main.")
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
    )
    max_total_tokens = forms.IntegerField(label=_("Max total tokens"), required=False, min_value=2, max_value=1_048_576)
    max_batch_total_tokens = forms.IntegerField(
        label=_("Max batch total tokens"), required=False, min_value=2, max_value=16_777_216
    )
    kv_cache_dtype = forms.ChoiceField(
        label=_("KV cache"),
        required=False,
        choices=[("", _("same as the model")), ("fp8_e4m3fn", "FP8 (e4m3fn)"), ("fp8_e5m2", "FP8 (e5m2)")],
    )
    credential = forms.ModelChoiceField(
        label=_("Hugging Face token"), required=False, queryset=None, help_text=_("For gated or private repos.")
    )

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)

        self.fields["credential"].queryset = Credential.objects.filter(kind=Credential.Kind.HF_TOKEN)

    def clean(self):
        data = super().clean()
        total, batch = data.get("max_total_tokens"), data.get("max_batch_total_tokens")
        if total and batch and batch < total:
            self.add_error("max_batch_total_tokens", _("Must be at least max total tokens (one full request)."))
        return data

"""Inventory forms. Memory is entered in GB (10^9 bytes) and stored in bytes."""

from __future__ import annotations

import json
from decimal import Decimal

from django import forms
from django.utils.translation import gettext_lazy as _

from deployments.models import Gpu, Host
from deployments.placement import GB


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
                raise forms.ValidationError(_("Not valid JSON: %(error)s") % {"error": exc}) from None
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


class HostForm(forms.ModelForm):
    labels = LabelsField(label=_("Labels"), required=False, help_text=_("e.g. zone=rack-2, tier=prod"))

    class Meta:
        model = Host
        fields = ["name", "address", "labels", "runtime", "model_store", "status"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Online/offline come from the agent's heartbeats; people set only these two.
        self.fields["status"].choices = [(Host.Status.MANUAL, Host.Status.MANUAL.label),
                                         (Host.Status.MAINTENANCE, Host.Status.MAINTENANCE.label)]
        if self.instance.pk and self.instance.status not in (Host.Status.MANUAL, Host.Status.MAINTENANCE):
            self.fields["status"].choices.insert(0, (self.instance.status, self.instance.get_status_display()))


class GpuForm(forms.ModelForm):
    memory_gb = forms.DecimalField(label=_("Memory (GB)"), min_value=Decimal("0.1"), max_digits=8, decimal_places=2,
                                   help_text=_("10^9 bytes, as the planner counts."))

    class Meta:
        model = Gpu
        fields = ["index", "name", "memory_gb", "power_limit_w", "compute_capability", "nvlink_group", "uuid",
                  "serial", "health"]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["memory_gb"].initial = round(Decimal(self.instance.memory_total) / GB, 2)

    def service_fields(self) -> dict:
        data = {name: value for name, value in self.cleaned_data.items() if name != "memory_gb"}
        data["memory_total"] = int(self.cleaned_data["memory_gb"] * GB)
        return data

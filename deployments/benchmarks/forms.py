"""The benchmark pages' forms: the start form (a running deployment the user may use and the workload, field by
field; the rules themselves are the load generator's, through workload.check_workload, so the form and the API
refuse the same things) and the list's filters."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.utils.translation import gettext_lazy as _

from console.forms import FilterForm, StyledMixin
from deployments.benchmarks.models import BenchmarkRun
from deployments.benchmarks.workload import DIALECTS, SWEEPS

DIALECT_LABELS = {
    "openai-chat": _("OpenAI chat completions (/v1/chat/completions)"),
    "openai-completion": _("OpenAI completions (/v1/completions)"),
    "tgi-generate-stream": _("TGI native stream (/generate_stream, with the server's timing headers)"),
}
SWEEP_LABELS = {"concurrency": _("Concurrency (closed loop)"), "rate": _("Request rate (Poisson arrivals)")}
SAMPLING = ("temperature", "top_p", "top_k", "ignore_eos")
# Form fields that are the workload's own keys, as they are.
PLAIN = ("dialect", "sweep", "max_concurrency", "warmup_s", "warmup_requests", "duration_s", "requests", "seed")
LENGTH_HELP = _(
    'Tokens per request: a number (128), or a distribution as JSON: {"percentiles": {"min": 16, "p50": 128, '
    '"max": 1024}} or {"histogram": {"bins": [0, 64, 256], "counts": [10, 30]}} (a dataset version\'s '
    "token_lengths statistics fit as they are)."
)


def _length(value: str, message: str) -> int | dict:
    text = (value or "").strip()
    if text.isdigit():
        return int(text)
    try:
        parsed = json.loads(text)
    except ValueError:
        raise forms.ValidationError(message) from None
    if isinstance(parsed, bool) or not isinstance(parsed, int | dict):
        raise forms.ValidationError(message)
    return parsed


def _level(text: str) -> int | float:
    return int(text) if text.isdigit() else float(text)


def length_text(value: Any) -> str:
    """A workload length as the form shows it: the number, or the distribution's JSON."""
    return str(value) if isinstance(value, int) else json.dumps(value)


def form_initial(workload: dict[str, Any]) -> dict[str, Any]:
    """A workload (a preset, or an earlier run's) as the start form's initial values."""
    initial = {key: workload[key] for key in PLAIN if workload.get(key) is not None}
    for key in ("prompt_tokens", "output_tokens"):
        if key in workload:
            initial[key] = length_text(workload[key])
    initial["levels"] = ", ".join(f"{level:g}" for level in workload.get("levels") or [])
    initial.update({key: value for key, value in (workload.get("sampling") or {}).items() if key in SAMPLING})
    return initial


class BenchmarkForm(StyledMixin, forms.Form):
    deployment = forms.ModelChoiceField(
        label=_("Deployment"),
        queryset=BenchmarkRun.objects.none(),
        help_text=_("A running deployment you may use; requests go through the gateway with a key of yours."),
    )
    dialect = forms.ChoiceField(label=_("API"), choices=[(d, DIALECT_LABELS[d]) for d in DIALECTS])
    prompt_tokens = forms.CharField(label=_("Prompt length (tokens)"), help_text=LENGTH_HELP, required=False)
    prompt_dataset = forms.ModelChoiceField(
        label=_("Or prompt lengths like a dataset version's"),
        queryset=BenchmarkRun.objects.none(),
        required=False,
        empty_label=_("none: the prompt length above"),
        help_text=_(
            "Its token-length histogram (from its statistics: counts only, no row is read) replaces the prompt length."
        ),
    )
    output_tokens = forms.CharField(label=_("Output length (tokens)"), help_text=_("The same shapes as the prompt."))
    sweep = forms.ChoiceField(label=_("Sweep"), choices=[(s, SWEEP_LABELS[s]) for s in SWEEPS])
    levels = forms.CharField(
        label=_("Levels"),
        help_text=_("Separated by commas: concurrent callers (1, 4, 16, 64) or requests per second (0.5, 2, 8)."),
    )
    max_concurrency = forms.IntegerField(
        label=_("Most requests in flight"), required=False, help_text=_("Rate sweeps only; empty: no cap.")
    )
    warmup_s = forms.FloatField(label=_("Warm-up (s)"), required=False, help_text=_("Per step, not measured."))
    warmup_requests = forms.IntegerField(
        label=_("Warm-up requests"), required=False, help_text=_("Instead of a warm-up time.")
    )
    duration_s = forms.FloatField(label=_("Duration per step (s)"), required=False)
    requests = forms.IntegerField(
        label=_("Requests per step"), required=False, help_text=_("Instead of a duration: give one of the two.")
    )
    temperature = forms.FloatField(label=_("Temperature"), required=False, help_text=_("Empty or 0: greedy."))
    top_p = forms.FloatField(label=_("Top p"), required=False)
    top_k = forms.IntegerField(label=_("Top k"), required=False)
    ignore_eos = forms.BooleanField(
        label=_("Ignore end of sequence (vLLM): every answer its full length"), required=False
    )
    seed = forms.IntegerField(label=_("Seed"), initial=0, help_text=_("The same seed draws the same lengths."))
    note = forms.CharField(label=_("Note"), required=False, max_length=500)

    def __init__(self, *args, deployments, versions=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["deployment"].queryset = deployments
        if versions is None:
            del self.fields["prompt_dataset"]
        else:
            self.fields["prompt_dataset"].queryset = versions
            self.fields["prompt_dataset"].label_from_instance = lambda v: (
                f"{v.dataset.name} v{v.version} ({v.stats['token_lengths'].get('tokenizer') or '?'})"
            )
        self.fields["deployment"].label_from_instance = lambda d: (
            f"{d.name} (v{d.spec.version}, {d.spec.get_backend_display()})" if d.spec_id else d.name
        )

    def clean_prompt_tokens(self) -> int | dict | None:
        if not (self.cleaned_data["prompt_tokens"] or "").strip():
            return None  # clean() asks for it unless a dataset version gives the lengths
        return _length(self.cleaned_data["prompt_tokens"], _("Give a number of tokens or a distribution as JSON."))

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        version = data.get("prompt_dataset")
        if version is not None:
            lengths = version.stats["token_lengths"]
            data["prompt_tokens"] = {"histogram": {"bins": lengths.get("bins"), "counts": lengths.get("counts")}}
        elif data.get("prompt_tokens") is None and "prompt_tokens" not in self.errors:
            self.add_error("prompt_tokens", _("Give a number of tokens, a distribution, or choose a dataset version."))
        return data

    def clean_output_tokens(self) -> int | dict:
        return _length(self.cleaned_data["output_tokens"], _("Give a number of tokens or a distribution as JSON."))

    def clean_levels(self) -> list[int | float]:
        parts = [part.strip() for part in self.cleaned_data["levels"].replace(";", ",").split(",") if part.strip()]
        try:
            return [_level(part) for part in parts]
        except (ValueError, OverflowError):
            raise forms.ValidationError(_("Give numbers separated by commas, e.g. 1, 4, 16, 64.")) from None

    def workload(self) -> dict[str, Any]:
        """The workload in the API's shape (workload.check_workload fills and checks the rest)."""
        data = self.cleaned_data
        workload = {key: data[key] for key in PLAIN if data.get(key) not in (None, "")}
        workload.update({key: data[key] for key in ("prompt_tokens", "output_tokens", "levels")})
        sampling = {key: data[key] for key in ("temperature", "top_p", "top_k") if data.get(key) is not None}
        if data.get("ignore_eos"):
            sampling["ignore_eos"] = True
        if sampling:
            workload["sampling"] = sampling
        return workload


class BenchmarkFilterForm(FilterForm):
    q = forms.CharField(label=_("Search"), required=False)
    deployment = forms.ModelChoiceField(label=_("Deployment"), queryset=BenchmarkRun.objects.none(), required=False)
    state = forms.ChoiceField(label=_("State"), required=False, choices=[("", _("any")), *BenchmarkRun.State.choices])

    def __init__(self, *args, deployments, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["deployment"].queryset = deployments

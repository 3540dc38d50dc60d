"""The quantize and evaluate forms. The rules themselves are the programs' (the services check with the spec
modules), so the forms and the API refuse the same things."""

from __future__ import annotations

from django import forms
from django.utils.functional import lazy
from django.utils.translation import gettext_lazy as _

from console.forms import StyledMixin
from deployments.finetune.selectors import trainable_versions
from deployments.quality import selectors
from deployments.quality.models import TASK_LABELS
from deployments.quality.services import (
    DEFAULT_EVAL_FRACTION,
    DEFAULT_SPLIT_SEED,
    GROUP_SIZES,
    SCHEMES,
    TASK_KINDS,
    cuda_only_reason,
)

SCHEME_LABELS = {
    "W4A16_GPTQ": _("W4A16 GPTQ: 4-bit weights, calibrated"),
    "W4A16_AWQ": _("W4A16 AWQ: 4-bit weights, activation-aware, calibrated"),
    "W4A16_RTN": _("W4A16 round-to-nearest: 4-bit weights, no calibration"),
    "FP8_DYNAMIC": _("FP8 dynamic: 8-bit float weights and activations, no calibration"),
    "W8A8_INT8": _("W8A8 INT8: SmoothQuant + GPTQ, calibrated"),
}
GROUP_LABELS = {-1: _("one scale per channel")}


def scheme_label(name: str) -> str:
    scheme = SCHEMES[name]
    label = str(SCHEME_LABELS.get(name, scheme.label))
    if scheme.cuda_only_reason:
        label += " " + str(_("(needs a CUDA GPU)"))
    return label


def _artifact_label(artifact) -> str:
    return f"{artifact.repo.repo_id}@{(artifact.repo.commit or 'local')[:12]} · {artifact.host.name}"


def _version_label(version) -> str:
    return version.choice_label


class QuantizeForm(StyledMixin, forms.Form):
    source = forms.ModelChoiceField(label=_("Model"), queryset=selectors.evaluable_models())
    scheme = forms.ChoiceField(label=_("Scheme"), choices=())
    group_size = forms.TypedChoiceField(
        label=_("Group size"),
        coerce=int,
        choices=[(g, GROUP_LABELS.get(g, g)) for g in GROUP_SIZES],
        initial=128,
        help_text=_("4-bit schemes: weights share a scale per group of this many inputs."),
    )
    ignore = forms.CharField(
        label=_("Layers left unquantized"),
        initial="lm_head",
        required=False,
        help_text=_("Module names separated by commas; the output head by default."),
    )
    kv_cache_fp8 = forms.BooleanField(
        label=_("FP8 KV cache"), required=False, help_text=_("Also calibrate FP8 scales for the KV cache.")
    )
    calibration_version = forms.ModelChoiceField(
        label=_("Calibration data"),
        queryset=selectors.evaluable_models().none(),
        required=False,
        empty_label=_("The calibration sample the console ships"),
        help_text=_("A dataset version your team may train on: the job reads it on the host; no row is shown."),
    )
    samples = forms.IntegerField(label=_("Calibration samples"), initial=64, min_value=1)
    seq_len = forms.IntegerField(label=_("Calibration sequence length"), initial=512, min_value=1)

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["scheme"].choices = [(name, scheme_label(name)) for name in SCHEMES]
        needs_gpu = " ".join(f"{name}: {cuda_only_reason(name)}" for name in SCHEMES if cuda_only_reason(name))
        if needs_gpu:
            self.fields["scheme"].help_text = _("Refused on hosts without a GPU: %(list)s") % {"list": needs_gpu}
        self.fields["source"].label_from_instance = _artifact_label
        self.fields["calibration_version"].queryset = trainable_versions(user=user)
        self.fields["calibration_version"].label_from_instance = _version_label

    def options(self) -> dict:
        data = self.cleaned_data
        ignore = [name.strip() for name in (data.get("ignore") or "").split(",") if name.strip()]
        scheme = data["scheme"]
        return {
            "scheme": scheme,
            # The group size applies to 4-bit schemes only; the form always sends one.
            "group_size": data["group_size"] if SCHEMES[scheme].grouped else None,
            "ignore": ignore,
            "kv_cache_fp8": data["kv_cache_fp8"],
            "samples": data["samples"],
            "seq_len": data["seq_len"],
        }


class EvaluateForm(StyledMixin, forms.Form):
    artifacts = forms.ModelMultipleChoiceField(
        label=_("Models"),
        queryset=selectors.evaluable_models(),
        help_text=_("Up to 8 models on one host, compared on the same data."),
    )
    perplexity = forms.BooleanField(label=_("Perplexity"), required=False, initial=True)
    perplexity_version = forms.ModelChoiceField(
        label=_("Held-out text"),
        queryset=selectors.evaluable_models().none(),
        required=False,
        empty_label=_("The text sample the console ships"),
        help_text=_(
            "The whole version is read as held-out text: choose one that no compared model was trained on, or only "
            "its fine-tune eval split below."
        ),
    )
    eval_split = forms.BooleanField(
        label=_("Only its fine-tune eval split"),
        required=False,
        help_text=_(
            "The rows a fine-tune of this version with the eval share and seed below held out, and did not train on."
        ),
    )
    eval_fraction = forms.FloatField(
        label=_("Eval share"),
        required=False,
        # Interpolated when shown (a lazy string's % runs at import, in English).
        help_text=lazy(
            lambda: (
                _("Blank: the split computed in the version's statistics, else %(fraction)s.")
                % {"fraction": DEFAULT_EVAL_FRACTION}
            ),
            str,
        )(),
    )
    split_seed = forms.IntegerField(
        label=_("Split seed"),
        required=False,
        help_text=lazy(
            lambda: (
                _("The fine-tune's seed. Blank: the split computed in the version's statistics, else %(seed)s.")
                % {"seed": DEFAULT_SPLIT_SEED}
            ),
            str,
        )(),
    )
    context_length = forms.IntegerField(label=_("Context length"), initial=512, min_value=1)
    stride = forms.IntegerField(
        label=_("Stride"), initial=256, min_value=1, help_text=_("Tokens each window moves on; at most the context.")
    )
    task_version = forms.ModelChoiceField(
        label=_("Task dataset"),
        queryset=selectors.evaluable_models().none(),
        required=False,
        empty_label=_("No task"),
    )
    task_kind = forms.ChoiceField(
        label=_("Task kind"),
        choices=[(k, TASK_LABELS[k]) for k in TASK_KINDS],
        initial="multiple_choice",
        required=False,
    )
    prompt_field = forms.CharField(label=_("Prompt field"), initial="prompt", required=False)
    expected_field = forms.CharField(label=_("Expected answer field"), initial="expected", required=False)
    choices_field = forms.CharField(label=_("Choices field"), initial="choices", required=False)
    limit = forms.IntegerField(label=_("Examples"), required=False, min_value=1, help_text=_("Blank: all of them."))
    task_eval_split = forms.BooleanField(
        label=_("Only the task's fine-tune eval split"),
        required=False,
        help_text=_("With the eval share and seed of the version's computed split, else the defaults above."),
    )

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["artifacts"].label_from_instance = _artifact_label
        for name in ("perplexity_version", "task_version"):
            self.fields[name].queryset = trainable_versions(user=user)
            self.fields[name].label_from_instance = _version_label

    def clean(self):
        data = super().clean()
        if not data.get("perplexity") and not data.get("task_version"):
            self.add_error("perplexity", _("Measure perplexity, a task, or both."))
        return data

    def perplexity_options(self) -> dict | None:
        data = self.cleaned_data
        if not data.get("perplexity"):
            return None
        options = {"context_length": data["context_length"], "stride": data["stride"]}
        if data.get("eval_split") or data.get("eval_fraction") is not None or data.get("split_seed") is not None:
            options |= {"eval_split": True, "eval_fraction": data.get("eval_fraction"), "seed": data.get("split_seed")}
        return options

    def task_options(self) -> dict | None:
        data = self.cleaned_data
        if not data.get("task_version"):
            return None
        kind = data.get("task_kind") or "multiple_choice"
        task = {
            "kind": kind,
            "prompt_field": data.get("prompt_field") or "prompt",
            "expected_field": data.get("expected_field") or "expected",
            "limit": data.get("limit"),
        }
        if kind == "multiple_choice":
            task["choices_field"] = data.get("choices_field") or "choices"
        if data.get("task_eval_split"):
            task["eval_split"] = True
        return task

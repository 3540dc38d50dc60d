"""The fine-tune form: a base model, a dataset version the user may train on, the method, precision and
hyperparameters with the training program's defaults. The rules themselves are the program's
(services.check_options), so the form and the API refuse the same things."""

from __future__ import annotations

from django import forms
from django.utils.translation import gettext_lazy as _

from console.forms import StyledMixin
from deployments.finetune import selectors
from deployments.finetune.services import HYPERPARAMETERS, METHODS, PRECISIONS, SCHEDULERS

METHOD_LABELS = {"lora": _("LoRA"), "qlora": _("QLoRA (4-bit, CUDA GPUs only)"), "full": _("Full fine-tune")}
PRECISION_LABELS = {
    "auto": _("Automatic (bf16 on GPUs that have it, fp32 on CPU)"),
    "bf16": "bf16",
    "fp16": "fp16",
    "fp32": "fp32",
}


def _default(name: str):
    return HYPERPARAMETERS[name][1]


class FinetuneForm(StyledMixin, forms.Form):
    base = forms.ModelChoiceField(label=_("Base model"), queryset=selectors.base_models())
    dataset_version = forms.ModelChoiceField(label=_("Dataset version"), queryset=selectors.base_models().none())
    method = forms.ChoiceField(label=_("Method"), choices=[(m, METHOD_LABELS[m]) for m in METHODS], initial="lora")
    precision = forms.ChoiceField(label=_("Precision"), choices=[(p, PRECISION_LABELS[p]) for p in PRECISIONS])
    gradient_checkpointing = forms.BooleanField(
        label=_("Gradient checkpointing"), required=False, help_text=_("Less activation memory, about a third slower.")
    )
    gpu_count = forms.IntegerField(
        label=_("GPUs"), min_value=1, max_value=16, initial=1, help_text=_("Data parallel, on one host.")
    )
    learning_rate = forms.FloatField(label=_("Learning rate"), initial=_default("learning_rate"))
    epochs = forms.FloatField(label=_("Epochs"), initial=_default("epochs"))
    max_steps = forms.IntegerField(label=_("Max steps"), required=False, help_text=_("Overrides epochs when set."))
    batch_size = forms.IntegerField(label=_("Batch size per device"), initial=_default("batch_size"))
    grad_accumulation = forms.IntegerField(label=_("Gradient accumulation"), initial=_default("grad_accumulation"))
    max_seq_len = forms.IntegerField(label=_("Max sequence length"), initial=_default("max_seq_len"))
    packing = forms.BooleanField(label=_("Packing"), required=False)
    lora_r = forms.IntegerField(label=_("LoRA r"), initial=_default("lora_r"))
    lora_alpha = forms.IntegerField(label=_("LoRA alpha"), initial=_default("lora_alpha"))
    lora_dropout = forms.FloatField(label=_("LoRA dropout"), initial=_default("lora_dropout"))
    target_modules = forms.CharField(
        label=_("LoRA target modules"),
        initial=_default("target_modules"),
        help_text=_('"all-linear", or module names separated by commas (q_proj, v_proj).'),
    )
    warmup_steps = forms.IntegerField(label=_("Warm-up steps"), initial=_default("warmup_steps"))
    scheduler = forms.ChoiceField(label=_("Scheduler"), choices=[(s, s) for s in SCHEDULERS], initial="linear")
    seed = forms.IntegerField(label=_("Seed"), initial=_default("seed"))
    eval_fraction = forms.FloatField(
        label=_("Eval split"), initial=0.0, help_text=_("Share of rows held out, e.g. 0.05.")
    )
    eval_every = forms.IntegerField(label=_("Eval every (steps)"), required=False)
    checkpoint_every = forms.IntegerField(label=_("Checkpoint every (steps)"), initial=100)

    HYPER = (
        "learning_rate", "epochs", "max_steps", "batch_size", "grad_accumulation", "max_seq_len", "packing",
        "lora_r", "lora_alpha", "lora_dropout", "target_modules", "warmup_steps", "scheduler", "seed",
    )  # fmt: skip

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["dataset_version"].queryset = selectors.trainable_versions(user=user)
        self.fields["dataset_version"].label_from_instance = lambda v: v.choice_label
        self.fields["base"].label_from_instance = lambda a: (
            f"{a.repo.repo_id}@{(a.repo.commit or 'local')[:12]} · {a.host.name}"
        )

    def options(self) -> dict:
        """The options in the program's spec shape (services.check_options fills and checks the rest)."""
        data = self.cleaned_data
        hyper = {name: data.get(name) for name in self.HYPER if data.get(name) not in (None, "")}
        targets = str(hyper.get("target_modules") or "all-linear").strip()
        hyper["target_modules"] = (
            targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
        )
        return {
            "method": data["method"],
            "precision": data["precision"],
            "gradient_checkpointing": data["gradient_checkpointing"],
            "eval_fraction": data.get("eval_fraction") or 0.0,
            "eval_every": data.get("eval_every"),
            "checkpoint_every": data.get("checkpoint_every") or 100,
            "hyperparameters": hyper,
        }

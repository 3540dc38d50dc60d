"""Evaluation figures: one row per artifact, metric and data identity, so runs on the same data compare."""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _

# Task kinds as people read them (the stored value is the program's name: workers/jobs/evaluate_spec.TASK_KINDS).
TASK_LABELS = {"multiple_choice": _("Multiple choice"), "exact_match": _("Exact match")}


class EvalResult(models.Model):
    """A perplexity or an accuracy of one artifact, measured by an evaluate job on identified data: a dataset
    version (or the shipped sample, version null) with the data's sha256, and the window (perplexity) or the task
    kind (accuracy). Figures with the same `comparable_key` were computed on the same tokens the same way."""

    class Metric(models.TextChoices):
        PERPLEXITY = "perplexity", _("perplexity")
        ACCURACY = "accuracy", _("accuracy")

    job = models.ForeignKey(
        "deployments.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="eval_results"
    )
    artifact = models.ForeignKey("deployments.ModelArtifact", on_delete=models.CASCADE, related_name="eval_results")
    metric = models.CharField(_("metric"), max_length=12, choices=Metric.choices)
    # Null: the text sample the project ships (workers/jobs/data); the sha256 says which bytes either way.
    dataset_version = models.ForeignKey(
        "deployments.DatasetVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    data_sha256 = models.CharField(_("data sha256"), max_length=64, blank=True)
    context_length = models.PositiveIntegerField(_("context length"), null=True, blank=True)
    stride = models.PositiveIntegerField(_("stride"), null=True, blank=True)
    task_kind = models.CharField(_("task kind"), max_length=20, blank=True)
    value = models.FloatField(_("value"))
    tokens = models.BigIntegerField(_("tokens"), null=True, blank=True)
    examples = models.PositiveIntegerField(_("examples"), null=True, blank=True)
    tokens_per_s = models.FloatField(_("tokens/s"), null=True, blank=True)
    # Library versions, fields, dtype, device; "split": the fine-tune eval split scored (part of comparable_key).
    detail = models.JSONField(_("detail"), default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["artifact", "metric", "-created_at"]
        default_permissions = ()
        indexes = [models.Index(fields=["artifact", "metric"])]

    def __str__(self) -> str:
        return f"{self.metric} {self.value:g} of artifact {self.artifact_id}"

    @property
    def data_label(self) -> str:
        if self.dataset_version_id is None:
            return str(_("shipped sample"))
        version = self.dataset_version
        label = f"{version.dataset.name} v{version.version}"
        split = (self.detail or {}).get("split")
        if split:
            # Other data than the whole version: said where the figure is shown.
            label += " " + _("(fine-tune eval split %(fraction)s, seed %(seed)s)") % {
                "fraction": split.get("eval_fraction"),
                "seed": split.get("seed"),
            }
        return label

    @property
    def task_kind_label(self) -> str:
        return str(TASK_LABELS.get(self.task_kind, self.task_kind))

    @property
    def comparable_key(self) -> tuple:
        """Rows with equal keys were measured on the same data, the same way. A fine-tune eval split of the version
        (detail["split"]: eval_fraction and seed) is other data than the whole version, and than another split."""
        split = (self.detail or {}).get("split") or {}
        return (
            self.metric,
            self.dataset_version_id,
            self.data_sha256,
            self.context_length,
            self.stride,
            self.task_kind,
            split.get("eval_fraction"),
            split.get("seed"),
        )

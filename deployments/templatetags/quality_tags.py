"""The quantize and evaluate parts of the job page: options, the produced model, the figures, stop."""

from __future__ import annotations

from django import template

from console import roles
from console.permissions import can
from deployments.models import DatasetVersion, Job, ModelArtifact
from deployments.quality import selectors

register = template.Library()


@register.inclusion_tag("quality/_job_panel.html", takes_context=True)
def quality_panel(context, job: Job) -> dict:
    user = context["request"].user
    params = job.params or {}
    version = DatasetVersion.objects.select_related("dataset").filter(pk=params.get("dataset_version_id")).first()
    return {
        "job": job,
        "options": params.get("options") or {},
        "calibration": f"{version.dataset.name} v{version.version}" if version else "",
        "produced": selectors.produced(job) if job.kind == Job.Kind.QUANTIZE else None,
        "results": list(selectors.job_results(job)) if job.kind == Job.Kind.EVALUATE else [],
        "can_act": can(user, roles.FINETUNE),
        "csrf_token": context.get("csrf_token"),
    }


@register.inclusion_tag("quality/_artifact_panel.html", takes_context=True)
def quality_artifact_panel(context, artifact: ModelArtifact) -> dict:
    """On a model's page: how it was quantized, its evaluation figures, and Quantize / Evaluate for those who
    hold finetune."""
    user = context["request"].user
    is_model = artifact.kind == ModelArtifact.Kind.MODEL and artifact.status == ModelArtifact.Status.READY
    lineage = artifact.lineage or {}
    return {
        "artifact": artifact,
        "quantized": lineage if lineage.get("scheme") else None,
        "results": list(selectors.artifact_results(artifact)[:50]) if artifact.pk else [],
        "can_start": is_model and can(user, roles.FINETUNE),
    }

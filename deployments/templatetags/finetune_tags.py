"""The fine-tune parts of shared pages: a run's checkpoints, result, lineage and actions on the job page; an
artifact's lineage and its merge and deploy actions on the model page."""

from __future__ import annotations

from django import template

from console import roles
from console.permissions import can, may_deploy_anywhere, restrict
from deployments.finetune import adapters, selectors
from deployments.models import Deployment, Job, ModelArtifact

register = template.Library()


@register.inclusion_tag("finetune/_job_panel.html", takes_context=True)
def finetune_panel(context, job: Job) -> dict:
    user = context["request"].user
    produced = selectors.produced(job)
    return {
        "job": job,
        "checkpoints": list(selectors.checkpoints(job)),
        "produced": produced,
        "options": (job.params or {}).get("options") or {},
        "can_act": can(user, roles.FINETUNE),
        "resumable": job.status in (Job.Status.CANCELLED, Job.Status.FAILED),
        "csrf_token": context.get("csrf_token"),
    }


@register.inclusion_tag("finetune/_artifact_panel.html", takes_context=True)
def artifact_lineage(context, artifact: ModelArtifact) -> dict:
    user = context["request"].user
    is_adapter = artifact.kind == ModelArtifact.Kind.ADAPTER
    deployments = []
    can_deploy = is_adapter and may_deploy_anywhere(user)
    if is_adapter and artifact.base_id:
        same_base = Deployment.objects.filter(spec__artifact__repo_id=artifact.base.repo_id).order_by("name")
        deployments = list(restrict(same_base, user, roles.VIEW))
    return {
        "artifact": artifact,
        "lineage": artifact.lineage or {},
        "is_adapter": is_adapter,
        "adapter_id": adapters.adapter_name(artifact) if is_adapter else "",
        "can_merge": is_adapter and can(user, roles.FINETUNE),
        "can_deploy": can_deploy,
        "teams": adapters.team_choices(user) if can_deploy else [],
        "deployments": deployments,
        "derived": list(artifact.derived.select_related("repo")[:20]) if artifact.pk else [],
        # A merged model's base is the adapter's base; the adapter is named in its lineage.
        "merged_into": list(
            ModelArtifact.objects.filter(lineage__adapter_artifact=artifact.pk).select_related("repo")[:20]
        )
        if is_adapter
        else [],
        "csrf_token": context.get("csrf_token"),
    }

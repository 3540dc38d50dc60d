"""Deploying a fine-tune's LoRA adapter: on its base model as a new deployment (TGI's --lora-adapters; requests
choose it with `adapter_id`), or added to a deployment of the same base through a new spec version (restarted when
it runs). Whoever deploys needs deploy there: the serving services check it."""

from __future__ import annotations

from django.db import transaction
from django.utils.translation import gettext as _

import audit
from console import roles
from console.errors import ApplicationError
from console.permissions import can, deploy_scope_teams, require
from deployments.models import Deployment, Gpu, ModelArtifact
from deployments.serving import services as serving
from deployments.serving.specs import spec_values


def adapter_name(adapter: ModelArtifact) -> str:
    """The name requests use as `adapter_id` (and the OpenAI routes as `model`)."""
    return adapter.repo.repo_id.rsplit("/", 1)[-1]


def _check(actor, adapter: ModelArtifact) -> None:
    require(actor, roles.VIEW, adapter)
    if adapter.kind != ModelArtifact.Kind.ADAPTER or adapter.base_id is None:
        raise ApplicationError(_("Only a LoRA adapter is deployed on a base model."))
    if adapter.status != ModelArtifact.Status.READY or adapter.base.status != ModelArtifact.Status.READY:
        raise ApplicationError(_("The adapter and its base model must both be ready."))


def same_base(deployment: Deployment, adapter: ModelArtifact) -> bool:
    spec = deployment.spec
    return spec is not None and spec.artifact.repo_id == adapter.base.repo_id


def may_deploy(user, adapter: ModelArtifact) -> bool:
    """Whether the page offers the deploy button: the deploy role, or a team scope of deploy (the services decide
    again, for the team and host)."""
    return can(user, roles.DEPLOY) or bool(deploy_scope_teams(user))


@transaction.atomic
def adapter_deploy(
    *, actor, adapter: ModelArtifact, name: str = "", team=None, deployment: Deployment | None = None
) -> Deployment:
    """Serve the adapter: a new deployment of its base (when `deployment` is None) or a new spec version of
    `deployment` with the adapter added."""
    _check(actor, adapter)
    entry = {"name": adapter_name(adapter), "path": adapter.path}
    if deployment is None:
        device = "gpu" if Gpu.objects.filter(host=adapter.base.host).exists() else "cpu"
        spec = {"artifact": adapter.base_id, "device": device, "lora_adapters": [entry]}
        created = serving.deployment_create(
            actor=actor, name=name or adapter_name(adapter).lower(), spec=spec, team=team
        )
        target, version = created, 1
    else:
        if not same_base(deployment, adapter):
            raise ApplicationError(
                _("%(name)s serves another model; an adapter is added to a deployment of its base.")
                % {"name": deployment.name},
                field="deployment",
            )
        values = spec_values(deployment.spec)
        adapters = [a for a in values.get("lora_adapters") or [] if a.get("name") != entry["name"]]
        values["lora_adapters"] = [*adapters, entry]
        new = serving.spec_update(actor=actor, deployment=deployment, spec=values, note=f"add adapter {entry['name']}")
        target, version = deployment, new.version
        deployment.refresh_from_db()
        if deployment.state == Deployment.State.RUNNING:
            serving.deployment_restart(actor=actor, deployment=deployment)
    audit.record(
        action="adapter.deployed",
        actor=actor,
        target=adapter,
        detail={"deployment": target.name, "spec_version": version, "adapter_id": entry["name"]},
    )
    return target

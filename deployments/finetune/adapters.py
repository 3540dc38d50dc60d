"""Deploying a fine-tune's LoRA adapter: on its base model as a new deployment (TGI's --lora-adapters; requests
choose it with `adapter_id`), or added to a deployment of the same base through a new spec version (restarted when
it runs or is starting; a stopped one uses it at its next launch). Whoever deploys needs deploy there (the role, or
a team's grant on the host: the team owns the new deployment); the serving services check it."""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.db import transaction
from django.utils.translation import gettext as _

import audit
from console import roles
from console.errors import ApplicationError
from console.permissions import deploy_scope_allows, deploy_scope_teams, has_global, require
from deployments.models import ApprovalRequest, Deployment, Gpu, ModelArtifact
from deployments.serving import services as serving
from deployments.serving.actions import RESTART, allowed_actions
from deployments.serving.specs import spec_values


def adapter_name(adapter: ModelArtifact) -> str:
    """The name requests use as `adapter_id` (and the OpenAI routes as `model`)."""
    return adapter.repo.repo_id.rsplit("/", 1)[-1]


def _check(actor, adapter: ModelArtifact) -> None:
    require(actor, roles.VIEW, adapter)
    if adapter.kind != ModelArtifact.Kind.ADAPTER or adapter.base_id is None:
        raise ApplicationError(_("Only a LoRA adapter is deployed on a base model."))
    for artifact in (adapter, adapter.base):
        if artifact.status != ModelArtifact.Status.READY:
            raise ApplicationError(
                _("%(name)s is %(status)s on %(host)s, not ready: deploy the adapter once it is.")
                % {"name": artifact.repo.repo_id, "status": artifact.get_status_display(), "host": artifact.host.name}
            )


def same_base(deployment: Deployment, adapter: ModelArtifact) -> bool:
    spec = deployment.spec
    return spec is not None and spec.artifact.repo_id == adapter.base.repo_id


def team_choices(user) -> list[Group]:
    """The teams that may own a new deployment `user` makes by a team's grant of deploy (none for the role)."""
    if has_global(user, roles.DEPLOY):
        return []
    return list(Group.objects.filter(pk__in=deploy_scope_teams(user)).order_by("name"))


def team_named(name) -> Group | None:
    """The team a request names to own a new deployment (by name, as the deployments API takes it); None: none."""
    if name in (None, ""):
        return None
    if not isinstance(name, str):
        raise ApplicationError(_("There is no team of that name."), field="team")
    team = Group.objects.filter(name=name).exclude(name__in=list(roles.ROLES)).first()
    if team is None:
        raise ApplicationError(_("There is no team of that name."), field="team")
    return team


def _owning_team(actor, adapter: ModelArtifact, team: Group | None) -> Group | None:
    """Who owns a new deployment made by a team's grant of deploy (not the role): the team given, else the actor's
    one team that may deploy on the base model's host (placement prefers the host holding the files)."""
    if team is not None or has_global(actor, roles.DEPLOY):
        return team
    teams = deploy_scope_teams(actor)
    there = [pk for pk in teams if deploy_scope_allows(actor, team_id=pk, host_id=adapter.base.host_id, new=True)]
    choices = there or teams
    if len(choices) > 1:
        raise ApplicationError(_("Several of your teams may deploy: choose the one that owns it."), field="team")
    return Group.objects.get(pk=choices[0]) if choices else None  # none: deployment_create refuses


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
            actor=actor,
            name=name or adapter_name(adapter).lower(),
            spec=spec,
            team=_owning_team(actor, adapter, team),
        )
        target, version, restarted, approval = created, 1, False, None
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
        target = deployment
        if isinstance(new, ApprovalRequest):  # production: the edit (and its restart) waits for another admin
            version, restarted, approval = None, False, new.pk
        else:
            version, approval = new.version, None
            deployment.refresh_from_db()
            restarted = RESTART in allowed_actions(deployment)  # running or on its way: that server lacks the adapter
            if restarted:
                serving.deployment_restart(actor=actor, deployment=deployment)
    audit.record(
        action="adapter.deployed",
        actor=actor,
        target=adapter,
        detail={
            "deployment": target.name,
            "spec_version": version,
            "adapter_id": entry["name"],
            "restarted": restarted,
            "approval": approval,
        },
    )
    return target

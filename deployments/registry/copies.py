"""Copying a ready model to another host through the console (deployments/registry/copy_relay.py): the one way a
directory import or a console-made model (a fine-tune, a merge, a quantization) reaches a second host, and a way for
any model when the hosts cannot reach its source. Two copy jobs, one on each host; audited."""

from __future__ import annotations

from django.db import transaction
from django.utils.translation import gettext as _

import audit
from audit.telemetry import traced
from console import roles
from console.errors import ApplicationError
from console.permissions import require
from deployments.jobs.services import job_create
from deployments.models import ArtifactUse, Host, Job, ModelArtifact
from deployments.registry.copy_relay import RECEIVE, SEND

ON_THEIR_WAY = (ModelArtifact.Status.READY, ModelArtifact.Status.PENDING, ModelArtifact.Status.DOWNLOADING)


def copy_holder(copy: ModelArtifact) -> str:
    """The use a copy holds on its source while it runs: the source cannot be deleted under it."""
    return f"copy to {copy.host.name} (artifact {copy.pk})"


def copy_targets(artifact: ModelArtifact):
    """Hosts an admin may copy `artifact` to: every host but those already holding (or fetching) its repo."""
    holding = ModelArtifact.objects.filter(repo=artifact.repo, status__in=ON_THEIR_WAY).values_list("host", flat=True)
    return Host.objects.exclude(pk__in=holding).exclude(status=Host.Status.OFFLINE).order_by("name")


@traced("model.copy")
@transaction.atomic
def artifact_copy(*, actor, artifact: ModelArtifact, host: Host) -> ModelArtifact:
    """An admin copies a ready model to another host (manage_inventory); refused when that host has it already."""
    require(actor, roles.MANAGE_INVENTORY)
    if ModelArtifact.objects.filter(repo=artifact.repo, host=host, status__in=ON_THEIR_WAY).exists():
        raise ApplicationError(
            _("%(host)s already holds %(model)s (or is fetching it).") % {"host": host.name, "model": artifact.repo},
            field="host",
        )
    return start_copy(actor=actor, source=artifact, host=host, reason=_("asked for by an admin"))


def start_copy(*, actor, source: ModelArtifact, host: Host, reason: str) -> ModelArtifact:
    """The copy of `source` on `host`: one on its way already, else a new artifact and the two copy jobs. The caller
    has authorized the actor (an admin's action, or a launch placed on `host`)."""
    if source.host_id == host.pk:
        return source
    if source.status != ModelArtifact.Status.READY or not source.files_sha256:
        raise ApplicationError(
            _("%(model)s on %(host)s is not ready: only a ready model is copied.")
            % {"model": source.repo, "host": source.host.name},
            field="artifact",
        )
    base = None
    if source.base_id is not None:
        base = ModelArtifact.objects.filter(repo=source.base.repo, host=host, status=ModelArtifact.Status.READY).first()
        if base is None:
            raise ApplicationError(
                _("%(host)s has no ready copy of the base model %(base)s: copy it there first.")
                % {"host": host.name, "base": source.base.repo},
                field="host",
            )
    copy = ModelArtifact.objects.select_for_update().filter(repo=source.repo, host=host).first()
    if copy is not None and copy.status in ON_THEIR_WAY:
        return copy
    fields = {
        "status": ModelArtifact.Status.PENDING,
        "imported": source.imported,
        "kind": source.kind,
        "base": base,
        "lineage": source.lineage,
        "bytes_total": source.bytes_total,
        "bytes_done": 0,
    }
    if copy is None:
        creator = actor if getattr(actor, "is_authenticated", False) else None
        copy = ModelArtifact.objects.create(repo=source.repo, host=host, created_by=creator, **fields)
    else:
        for name, value in fields.items():
            setattr(copy, name, value)
        copy.save(update_fields=[*fields])
    ArtifactUse.objects.get_or_create(artifact=source, holder=copy_holder(copy))
    audit.record(
        action="model.copy_requested",
        actor=actor,
        target=copy,
        detail={"from": source.host.name, "to": host.name, "source_artifact": source.pk, "reason": reason},
    )
    params = {"source_artifact_id": source.pk}
    job_create(kind=Job.Kind.COPY, actor=actor, target=copy, queue=source.host.queue, params={**params, "role": SEND})
    job_create(kind=Job.Kind.COPY, actor=actor, target=copy, queue=host.queue, params={**params, "role": RECEIVE})
    return copy


def copy_ended(copy_id: int) -> None:
    """A copy's receiving job ended: the source may be deleted again."""
    copy = ModelArtifact.objects.select_related("host").filter(pk=copy_id).first()
    if copy is not None:
        ArtifactUse.objects.filter(holder=copy_holder(copy)).delete()

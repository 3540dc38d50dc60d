"""The delete job kind: a copy's files leave the host."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.db import transaction

import audit
from deployments.models import ModelArtifact
from workers.handlers.artifacts import artifact_of, model_store, staging_dir
from workers.runner import Handler, JobContext, register


@register("delete")
class DeleteHandler(Handler):
    """Remove a downloaded copy's files (never an imported directory's: those belong to whoever copied them). A copy
    the console made from another host (its manifest says `copied_from`) is the console's, imported or not."""

    def run(self, ctx: JobContext) -> dict:
        artifact = artifact_of(ctx)
        removed = False
        made_here = not artifact.imported or "copied_from" in (artifact.manifest or {})
        if artifact.path and made_here:
            path = Path(artifact.path).resolve()
            if model_store().resolve() in path.parents and path.exists():
                shutil.rmtree(path)
                removed = True
        shutil.rmtree(staging_dir(artifact), ignore_errors=True)
        with transaction.atomic():
            ModelArtifact.objects.filter(pk=artifact.pk).update(status=ModelArtifact.Status.DELETED, bytes_done=0)
            audit.record(
                action="model.deleted",
                actor=None,
                actor_name=f"agent:{artifact.host.name}",
                target=artifact,
                detail={"path": artifact.path, "files_removed": removed},
            )
        return {"removed": removed}

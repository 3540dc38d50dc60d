"""The import job kind: a directory already on the host becomes a registered artifact."""

from __future__ import annotations

import json
import os
from pathlib import Path

from django.db import transaction
from django.utils import timezone

from console.errors import ApplicationError
from deployments.models import Job, ModelArtifact
from deployments.registry import downloads, layout
from deployments.registry.downloads.staging import MANIFEST
from deployments.registry.downloads.verify import is_console_file
from deployments.registry.services import import_directory
from workers.handlers.artifacts import artifact_of, mark_ready, model_store
from workers.runner import Handler, JobCancelled, JobContext, JobFailure, register


def _readable_in_store(directory: Path, manifest_path: Path) -> None:
    """The console's manifest is 0644 wherever it is written. A directory inside the model store is the store's: its
    files become 0644 and its directories (and those between it and the store) 0755, so a server's non-root user
    reads it whatever modes it was copied with. A directory outside the store is the user's and keeps its modes."""
    store = Path(os.path.realpath(model_store()))
    try:
        os.chmod(manifest_path, 0o644)
        if store not in directory.parents:
            return
        layout.readable_by_servers(directory)
        for parent in directory.parents:
            if parent == store:
                break
            os.chmod(parent, parent.stat().st_mode | 0o555)  # noqa: S103 - others may walk through it, no more
    except OSError as error:
        raise JobFailure(
            f"{directory} cannot be made readable by servers: {error}",
            cause="permissions",
            next_step=f"Make its files readable by everyone (chmod -R a+rX {directory}), then import again.",
        ) from None


@register("import")
class ImportHandler(Handler):
    """Validate a directory already on the host, hash every file, and write its manifest."""

    def run(self, ctx: JobContext) -> dict:
        artifact = artifact_of(ctx)
        try:  # the host's own settings decide too
            directory = Path(import_directory(artifact.path))
        except ApplicationError as error:
            raise JobFailure(
                error.message, cause="not_allowed", next_step="Copy the model under an import root."
            ) from None
        if not directory.is_dir():
            raise JobFailure(
                f"{directory} is not a directory on {artifact.host.name}.",
                cause="not_found",
                next_step="Check the path on that host (copy the model there first).",
            )
        manifest_path = directory / MANIFEST
        if manifest_path.exists() and not is_console_file(manifest_path):
            raise JobFailure(
                f"{manifest_path} is the model's own file; the console writes its manifest under that name.",
                cause="exists",
                next_step=f"Rename or remove {MANIFEST} in that directory (servers do not read it), then import again.",
            )
        problems = downloads.validate_layout(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
        if problems:
            raise JobFailure(
                "; ".join(problems),
                cause="invalid_layout",
                next_step="A model directory needs config.json, a tokenizer and weights.",
            )
        try:
            files = downloads.hash_directory(
                directory,
                should_cancel=ctx.should_cancel,
                on_progress=lambda p: ctx.progress({"done": p.done, "total": p.total, "file": p.file}),
            )
        except downloads.Cancelled:
            raise JobCancelled() from None
        hashes = {path: info[1] for path, info in files.items()}
        total = sum(info[0] for info in files.values())
        manifest = {
            "source": "local directory",
            "path": str(directory),
            "imported_at": timezone.now().isoformat(),
            "actor": ctx.job.actor.get_username() if ctx.job.actor else "",
            "job": ctx.job.pk,
            "files": [{"path": p, "size": s, "sha256": h} for p, (s, h) in sorted(files.items())],
        }
        manifest_path.write_text(json.dumps(manifest, indent=1))
        _readable_in_store(directory, manifest_path)
        with transaction.atomic():
            mark_ready(
                artifact,
                action="model.imported",
                files_sha256=hashes,
                manifest=manifest,
                total=total,
                detail={"files": len(files), "bytes": total},
            )
            artifact.repo.__class__.objects.filter(pk=artifact.repo_id).update(total_size=total)
        return {"files": len(files), "bytes": total}

    def finished(self, ctx: JobContext, status: str) -> None:
        if status != Job.Status.SUCCEEDED:
            ModelArtifact.objects.filter(pk=ctx.job.target_id).update(status=ModelArtifact.Status.FAILED)

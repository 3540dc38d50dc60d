"""What the registry's job kinds share: the artifact a job works on, where its files live, and how a job's output
enters the model store."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

import audit
from deployments.models import ModelArtifact
from deployments.registry import layout
from workers.jobs.manifest import verify_manifest
from workers.runner import JobContext, JobFailure


def artifact_of(ctx: JobContext):
    return ModelArtifact.objects.select_related("repo__source", "host").get(pk=ctx.job.target_id)


def model_store() -> Path:
    return Path(settings.MODEL_STORE)


def staging_dir(artifact) -> Path:
    return layout.staging_dir(model_store(), artifact.pk)


def final_dir(artifact) -> Path:
    return layout.artifact_dir(model_store(), artifact.repo)


def failure_of(error) -> JobFailure:
    return JobFailure(str(error), cause=getattr(error, "cause", "error"), next_step=getattr(error, "next_step", ""))


def publish_output(source: Path, target: Path) -> None:
    """Move a finished output (a fine-tune's, a merge's, a quantization's) into the model store whole: a copy beside
    the target, verified against its manifest, readable by servers running as another user, renamed into place."""
    layout.make_store_dirs(model_store(), target.parent)  # 0755 below the store: servers walk through them
    target.parent.mkdir(parents=True, exist_ok=True)  # an output kept outside the store
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    problems = verify_manifest(partial)
    if problems:
        shutil.rmtree(partial, ignore_errors=True)
        raise JobFailure(
            f"The output does not match its manifest: {problems[0]}",
            cause="output_corrupt",
            next_step="Check the host's disk, then run the job again.",
        )
    layout.readable_by_servers(partial)  # servers may run as another user
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    shutil.rmtree(source, ignore_errors=True)


def mark_ready(
    artifact, *, action: str, files_sha256: dict, manifest: dict, total: int, detail: dict, path: Path | None = None
) -> None:
    """The artifact's files are in place in the store: READY with their hashes and manifest, and its one audit event
    (recorded as the agent of its host), in one transaction."""
    fields = {
        "status": ModelArtifact.Status.READY,
        "files_sha256": files_sha256,
        "manifest": manifest,
        "bytes_done": total,
        "bytes_total": total,
        "ready_at": timezone.now(),
    }
    if path is not None:
        fields["path"] = str(path)
    with transaction.atomic():
        ModelArtifact.objects.filter(pk=artifact.pk).update(**fields)
        audit.record(
            action=action, actor=None, actor_name=f"agent:{artifact.host.name}", target=artifact, detail=detail
        )

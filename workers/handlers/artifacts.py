"""What the registry's job kinds share: the artifact a job works on and where its files live."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from deployments.models import ModelArtifact
from deployments.registry import layout
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

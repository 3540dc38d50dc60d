"""Reads for quantize and evaluate pages and the API: the jobs a user may see (every dataset they read visible to
them), a job's produced artifact and figures, an artifact's figures."""

from __future__ import annotations

from django.db.models import QuerySet
from django.http import Http404

from console import roles
from console.permissions import ObjectHidden, restrict_datasets
from deployments.models import Dataset, DatasetVersion, EvalResult, Job, ModelArtifact

KINDS = (Job.Kind.QUANTIZE, Job.Kind.EVALUATE)


def job_versions(job: Job) -> list[int]:
    """The dataset versions a quantize or evaluate job reads (calibration, held-out text, task)."""
    params = job.params or {}
    found = [params.get("dataset_version_id"), *(params.get("dataset_version_ids") or [])]
    return sorted({int(pk) for pk in found if pk is not None})


def _visible_versions(user) -> set[int]:
    datasets = restrict_datasets(Dataset.objects.all(), user)
    return set(DatasetVersion.objects.filter(dataset__in=datasets).values_list("pk", flat=True))


def quality_jobs(*, user, kind: str | None = None, limit: int = 200) -> list[Job]:
    """Quantize and evaluate jobs whose data the user may see, newest first."""
    jobs = Job.objects.filter(kind__in=[kind] if kind else KINDS).select_related("actor")
    visible = _visible_versions(user)
    shown = []
    for job in jobs.iterator():
        if set(job_versions(job)) <= visible:
            shown.append(job)
            if len(shown) >= limit:
                break
    return shown


def quality_job(user, pk, kind: str | None = None) -> Job:
    """A quantize or evaluate job the user may see; hidden (a dataset they may not see): an audited 404."""
    job = Job.objects.filter(pk=pk, kind__in=[kind] if kind else KINDS).first() if str(pk).isdigit() else None
    if job is None:
        raise Http404
    if not set(job_versions(job)) <= _visible_versions(user):
        raise ObjectHidden(user, roles.FINETUNE, job)
    return job


def produced(job: Job) -> ModelArtifact | None:
    return ModelArtifact.objects.select_related("repo").filter(produced_by=job).order_by("-pk").first()


def job_results(job: Job) -> QuerySet:
    return EvalResult.objects.filter(job=job).select_related("artifact__repo", "dataset_version__dataset")


def artifact_results(artifact: ModelArtifact) -> QuerySet:
    return EvalResult.objects.filter(artifact=artifact).select_related("dataset_version__dataset", "job")


def evaluable_models() -> QuerySet:
    """Ready full models on process-runtime hosts (where quantize and evaluate jobs run)."""
    from deployments.finetune.selectors import base_models

    return base_models()

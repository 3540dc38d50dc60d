"""Reads for fine-tune pages and the API: the runs a user may see, the bases and dataset versions they may train on,
a run's checkpoints and what it produced."""

from __future__ import annotations

from django.db.models import QuerySet

from console import roles
from console.permissions import dataset_allows, restrict_datasets
from deployments.models import Checkpoint, Dataset, DatasetVersion, Host, Job, ModelArtifact


def finetune_list(*, user) -> QuerySet:
    """Fine-tunes on datasets the user can see, newest first."""
    visible = restrict_datasets(Dataset.objects.all(), user).values_list("pk", flat=True)
    ids = [str(pk) for pk in visible]
    return Job.objects.filter(
        kind=Job.Kind.FINETUNE, target_type="deployments.dataset", target_id__in=ids
    ).select_related("actor")


def trainable_versions(*, user) -> QuerySet:
    """Ready dataset versions the user may train on (their team's, or granted)."""
    datasets = [d.pk for d in restrict_datasets(Dataset.objects.all(), user) if dataset_allows(user, roles.FINETUNE, d)]
    return (
        DatasetVersion.objects.filter(dataset_id__in=datasets, status=DatasetVersion.Status.READY)
        .select_related("dataset")
        .order_by("dataset__name", "-version")
    )


def base_models() -> QuerySet:
    """Ready full models on process-runtime hosts (where fine-tunes run)."""
    return (
        ModelArtifact.objects.filter(
            status=ModelArtifact.Status.READY, kind=ModelArtifact.Kind.MODEL, host__runtime=Host.Runtime.PROCESS
        )
        .select_related("repo", "host")
        .order_by("repo__repo_id", "host__name")
    )


def checkpoints(job: Job) -> QuerySet:
    return Checkpoint.objects.filter(job=job).order_by("-step")


def produced(job: Job) -> ModelArtifact | None:
    return ModelArtifact.objects.select_related("repo").filter(produced_by=job).order_by("-pk").first()

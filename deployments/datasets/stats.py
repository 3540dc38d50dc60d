"""Statistics of a dataset version, for engineers who may train on it but not read it: rows, columns and types, the
token lengths a chosen model's tokenizer gives (percentiles and a histogram), and the train/eval split a fine-tune
would make. A `dataset_stats` job computes them on a host (workers/handlers/dataset_stats.py runs
workers/jobs/dataset_stats.py there) and stores them on the version; nothing here or there holds a row.

The job's target is the dataset, so its log has the dataset's readers (console.permissions.require_output_reader),
as a fine-tune's does; its params name the version, which is what lets its agent fetch the file
(deployments/datasets/fetch.py)."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

import audit
from console import roles
from console.errors import ApplicationError
from console.permissions import dataset_allows, require, require_dataset, restrict
from deployments.datasets.models import Dataset, DatasetVersion
from deployments.inventory.models import Host
from deployments.jobs.models import Job
from deployments.jobs.services import job_create
from deployments.registry.models import ModelArtifact


class StatsRunning(ApplicationError):
    """A statistics job for this version is pending or running already (409)."""

    status = 409

    def __init__(self, message: str, *, job: Job) -> None:
        super().__init__(message, field="version")
        self.job = job

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "job": self.job.pk}


def tokenizer_models(*, user) -> QuerySet:
    """Ready full models the user can see on process-runtime hosts: those whose tokenizer a stats job can load
    (it runs where the model's files are)."""
    models = ModelArtifact.objects.filter(
        status=ModelArtifact.Status.READY, kind=ModelArtifact.Kind.MODEL, host__runtime=Host.Runtime.PROCESS
    ).select_related("repo", "host")
    return restrict(models, user, roles.VIEW).order_by("repo__repo_id", "host__name")


def stats_job(version: DatasetVersion) -> Job | None:
    """The pending or running statistics job of this version, if there is one."""
    return (
        Job.objects.filter(
            kind=Job.Kind.DATASET_STATS, params__dataset_version_id=version.pk, status__in=Job.Status.active()
        )
        .order_by("-pk")
        .first()
    )


def require_stats_use(actor, dataset: Dataset) -> None:
    """An engineer can compute a version's statistics when: they may use the dataset (train on it, as for a
    fine-tune) or manage it (its data stewards, admins). Seeing it is not enough: the job takes a host's time."""
    if dataset_allows(actor, roles.MANAGE_DATASETS, dataset):
        return
    require_dataset(actor, roles.FINETUNE, dataset)


def _tokenizer_home(actor, tokenizer: ModelArtifact) -> Host:
    require(actor, roles.VIEW, tokenizer)
    if tokenizer.status != ModelArtifact.Status.READY:
        raise ApplicationError(_("The model's files are not ready on its host."), field="tokenizer")
    if tokenizer.kind != ModelArtifact.Kind.MODEL:
        raise ApplicationError(_("Choose a full model's tokenizer, not an adapter's."), field="tokenizer")
    if tokenizer.host.runtime != Host.Runtime.PROCESS:
        raise ApplicationError(
            _("Statistics jobs run on hosts with the process runtime; %(host)s runs docker.")
            % {"host": tokenizer.host.name},
            field="tokenizer",
        )
    return tokenizer.host


def _any_host() -> Host:
    # The first by name: the same inventory always gives the same host.
    host = Host.objects.filter(status=Host.Status.ONLINE, runtime=Host.Runtime.PROCESS).order_by("name").first()
    if host is None:
        raise ApplicationError(
            _(
                "No online host with the process runtime can compute statistics. Choose a model's tokenizer (the "
                "job then runs on its host), or bring a process-runtime host online."
            ),
            field="tokenizer",
        )
    return host


@transaction.atomic
def stats_start(*, actor, version: DatasetVersion, tokenizer: ModelArtifact | None) -> Job:
    """Start computing a version's statistics, token lengths with `tokenizer` (none: no token lengths), on the
    tokenizer's host (else on an online process-runtime host). One job per version at a time."""
    require_stats_use(actor, version.dataset)
    version = DatasetVersion.objects.select_for_update().select_related("dataset").get(pk=version.pk)
    if version.status != DatasetVersion.Status.READY:
        raise ApplicationError(_("This dataset version is not ready."), field="version")
    host = _tokenizer_home(actor, tokenizer) if tokenizer is not None else _any_host()
    running = stats_job(version)
    if running is not None:
        raise StatsRunning(
            _("Statistics of this version are being computed already (job %(job)s); wait for it to finish.")
            % {"job": running.pk},
            job=running,
        )
    job = job_create(
        kind=Job.Kind.DATASET_STATS,
        actor=actor,
        target=version.dataset,
        queue=host.queue,
        params={"dataset_version_id": version.pk, "tokenizer_artifact_id": tokenizer.pk if tokenizer else None},
    )
    audit.record(
        action="dataset.stats_requested",
        actor=actor,
        target=version,
        detail={
            "job": job.pk,
            "version": version.version,
            "tokenizer": _model_name(tokenizer),
            "host": host.name,
        },
    )
    return job


def _model_name(artifact: ModelArtifact | None) -> str | None:
    if artifact is None:
        return None
    return f"{artifact.repo.repo_id}@{artifact.repo.commit or 'local'}"


@transaction.atomic
def stats_finished(job: Job, result: dict[str, Any]) -> DatasetVersion:
    """Store what the program computed on the version (with the tokenizer's repo@commit and the time); audited."""
    version = DatasetVersion.objects.select_for_update().get(pk=job.params["dataset_version_id"])
    tokenizer_id = job.params.get("tokenizer_artifact_id")
    tokenizer = ModelArtifact.objects.select_related("repo").filter(pk=tokenizer_id).first() if tokenizer_id else None
    version.stats = {
        **result,
        "tokenizer": _model_name(tokenizer),
        "tokenizer_artifact_id": tokenizer_id,
        "computed_at": timezone.now().isoformat(),
        "job": job.pk,
    }
    version.save(update_fields=["stats"])
    host = job.queue.removeprefix("host.")
    audit.record(
        action="dataset.stats_computed",
        actor=None,
        actor_name=f"agent:{host}",
        target=version,
        detail={"job": job.pk, "rows": result.get("rows"), "tokenizer": version.stats["tokenizer"]},
    )
    return version


def stats_view(version: DatasetVersion) -> dict[str, Any]:
    """What the page and the API say of a version's statistics: the stored figures with `status` ("computed" or
    "not_computed"), `running_job` (the id of a job computing them now, or None) and `failed_job` (the newest job,
    when it failed: its id, cause and first sentence, which never quotes a row; else None)."""
    newest = (
        Job.objects.filter(kind=Job.Kind.DATASET_STATS, params__dataset_version_id=version.pk)
        .only("pk", "status", "failure_cause", "failure_detail")
        .order_by("-pk")
        .first()
    )
    stored = version.stats or {}
    failed = None
    if newest is not None and newest.status == Job.Status.FAILED:
        failed = {"id": newest.pk, "cause": newest.failure_cause, "message": newest.failure_detail.split("\n", 1)[0]}
    return {
        **stored,
        "status": "computed" if stored else "not_computed",
        "running_job": newest.pk if newest is not None and newest.is_active else None,
        "failed_job": failed,
    }

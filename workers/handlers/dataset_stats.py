"""The `dataset_stats` job kind: fetch the dataset version into this host's cache (the internal route, sha256-
verified), run workers/jobs/dataset_stats.py on it with the chosen model's tokenizer through the host's runtime, and
store the figures on the version (deployments/datasets/stats.py). The program never quotes a row, so neither does
the job's log.

A worker that dies leaves the program running in its own session: the next attempt adopts it by its label. A
cancel stops it; statistics are computed again from the start next time (nothing is saved midway)."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings

from deployments.datasets import stats
from deployments.datasets.fetch import fetch_token
from deployments.models import DatasetVersion, Host, Job, ModelArtifact
from workers.datasets import DatasetFetchError, fetch_dataset_version
from workers.handlers.programs import ProgramRun
from workers.runner import Handler, JobContext, JobFailure, register


def work_dir(job: Job) -> Path:
    return Path(settings.CHECKPOINT_DIR) / f"dataset-stats-{job.pk}"


def _host(job: Job) -> Host:
    return Host.objects.get(name=job.queue.removeprefix("host."))


@register("dataset_stats")
class DatasetStatsHandler(Handler):
    def run(self, ctx: JobContext) -> dict:
        job = ctx.job
        version = DatasetVersion.objects.select_related("dataset").get(pk=job.params["dataset_version_id"])
        tokenizer_id = job.params.get("tokenizer_artifact_id")
        tokenizer = ModelArtifact.objects.select_related("repo").get(pk=tokenizer_id) if tokenizer_id else None
        run = ProgramRun(ctx, _host(job).runtime)

        def start() -> None:
            try:
                dataset = fetch_dataset_version(version, fetch_token(job, version), log=ctx.log)
            except DatasetFetchError as error:
                raise JobFailure(
                    str(error), cause="dataset_fetch_failed", next_step="Check that this host reaches the console."
                ) from error
            spec = {
                "dataset": str(dataset),
                "format": version.format,
                "tokenizer": tokenizer.path if tokenizer is not None else None,
            }
            run.start("dataset_stats", spec, work_dir(job))

        outcome = run.attempt(start)
        stored = stats.stats_finished(job, outcome.result or {})
        ctx.log(f"statistics of {version} stored: {stored.stats.get('rows')} rows")
        return {"dataset_version": version.pk, "rows": stored.stats.get("rows")}

    def finished(self, ctx: JobContext, status: str) -> None:
        shutil.rmtree(work_dir(ctx.job), ignore_errors=True)

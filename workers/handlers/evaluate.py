"""The `evaluate` job kind: run workers/jobs/evaluate.py on the host that holds the models, through the host's
runtime: every model on the same held-out data (a fetched dataset version or the shipped text sample), perplexity
and/or task accuracy; the figures are stored per artifact and data identity (deployments.quality EvalResult).

Only figures come back: the program logs no example, so no row of a dataset the engineer may not read reaches
the job's log.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings

from deployments.models import DatasetVersion, Job, ModelArtifact
from deployments.quality import services
from workers.handlers.programs import ProgramRun
from workers.handlers.quantize import device_env, fetch_version
from workers.runner import Handler, JobCancelled, JobContext, register


def work_dir(job: Job) -> Path:
    return Path(settings.CHECKPOINT_DIR) / f"evaluate-{job.pk}"


@register("evaluate")
class EvaluateHandler(Handler):
    def run(self, ctx: JobContext) -> dict:
        job = ctx.job
        by_pk = ModelArtifact.objects.select_related("repo", "host").in_bulk(job.params["artifact_ids"])
        artifacts = [by_pk[pk] for pk in job.params["artifact_ids"]]
        run = ProgramRun(ctx, artifacts[0].host.runtime)
        options = job.params["options"]

        def data(version_id: int | None) -> str | None:
            return str(fetch_version(ctx, DatasetVersion.objects.get(pk=version_id))) if version_id else None

        def start() -> None:
            perplexity, task = options.get("perplexity"), options.get("task")
            spec = {
                **options,
                "models": [{"id": services.model_id(a), "path": a.path} for a in artifacts],
                "perplexity": None
                if perplexity is None
                else {**perplexity, "path": data(job.params.get("perplexity_version_id"))},
                "task": None if task is None else {**task, "path": data(job.params.get("task_version_id"))},
            }
            run.start("evaluate", spec, work_dir(job), env=device_env(job))

        outcome = run.attempt(start)
        if ctx.should_cancel():
            raise JobCancelled
        rows = services.evaluate_finished(job=job, result=outcome.result or {})
        for row in rows:
            ctx.log(f"{row.artifact_id}: {row.metric} {row.value:.4g}")
        return {
            "results": [
                {"artifact": row.artifact_id, "metric": row.metric, "value": row.value, "eval_result": row.pk}
                for row in rows
            ]
        }

    def finished(self, ctx: JobContext, status: str) -> None:
        services.release(ctx.job)
        shutil.rmtree(work_dir(ctx.job), ignore_errors=True)

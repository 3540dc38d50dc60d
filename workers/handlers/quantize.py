"""The `quantize` job kind: run workers/jobs/quantize.py on the host that holds the source model, through the
host's runtime, under the job-program contract; publish the compressed-tensors checkpoint into the host's model
store whole (copied beside its place, verified against its manifest, renamed) and register it with its lineage.

A calibration dataset version is fetched as a fine-tune fetches its data (the job's token, sha256-verified,
cached on the host). The program writes its output beside output_dir and renames it when complete; each new
start clears what a killed run left, so a retry begins clean and the store never holds half a model.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings

from deployments.datasets.fetch import fetch_token
from deployments.models import DatasetVersion, Job, ModelArtifact
from deployments.quality import services
from workers.datasets import DatasetFetchError, fetch_dataset_version
from workers.handlers.artifacts import publish_output
from workers.handlers.programs import ProgramRun
from workers.jobs.manifest import read_manifest
from workers.runner import Handler, JobCancelled, JobContext, JobFailure, register


def work_dir(job: Job) -> Path:
    return Path(settings.CHECKPOINT_DIR) / f"quantize-{job.pk}"


def device_env(job: Job) -> dict[str, str]:
    # The placed GPU only; none at all on a CPU host.
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in job.params.get("gpu_indexes") or [])}


def fetch_version(ctx: JobContext, version: DatasetVersion) -> Path:
    try:
        return fetch_dataset_version(version, fetch_token(ctx.job, version), log=ctx.log)
    except DatasetFetchError as error:
        raise JobFailure(
            str(error),
            cause="dataset_fetch",
            next_step="Check that this host reaches the console (CONSOLE_INTERNAL_URL), then start the job again.",
        ) from error


@register("quantize")
class QuantizeHandler(Handler):
    def run(self, ctx: JobContext) -> dict:
        job = ctx.job
        source = ModelArtifact.objects.select_related("repo", "host").get(pk=job.params["source_artifact_id"])
        version_id = job.params.get("dataset_version_id")
        work = work_dir(job)
        produced = work / "model"
        run = ProgramRun(ctx, source.host.runtime)

        def start() -> None:
            # What a killed run left (its output, or the output's partial copy) goes: this run starts clean.
            for leftover in (produced, produced.with_name(produced.name + ".partial")):
                shutil.rmtree(leftover, ignore_errors=True)
            calibration = None
            if version_id:
                calibration = str(fetch_version(ctx, DatasetVersion.objects.get(pk=version_id)))
            options = job.params["options"]
            spec = {
                **options,
                "calibration": {**options["calibration"], "path": calibration},
                "source_model": source.path,
                "output_dir": str(produced),
                "device": job.params.get("device") or "cpu",
            }
            run.start("quantize", spec, work, env=device_env(job))

        outcome = run.attempt(start)
        if ctx.should_cancel():
            raise JobCancelled  # a model finished while the cancel came is not registered (finished() clears it)
        result = outcome.result or {}
        path = Path(result.get("path") or produced)
        manifest = read_manifest(path) if path.is_dir() else None
        if manifest is None:
            raise JobFailure(
                "The program reported a result, but its output has no manifest.",
                cause="output_missing",
                next_step="Start the quantize job again.",
            )
        home = services.quantize_output_home(source, job)
        publish_output(path, home)
        artifact = services.quantize_finished(job=job, result=result, path=home, manifest=manifest)
        ctx.log(f"registered the quantized model {artifact.repo.repo_id} at {home}")
        return {
            "artifact": artifact.pk,
            "path": str(home),
            "scheme": artifact.lineage.get("scheme"),
            "seconds": result.get("seconds"),
            "peak_memory_bytes": result.get("peak_memory_bytes"),
        }

    def finished(self, ctx: JobContext, status: str) -> None:
        services.release(ctx.job)
        shutil.rmtree(work_dir(ctx.job), ignore_errors=True)

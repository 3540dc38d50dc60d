"""The `finetune` and `merge` job kinds: run workers/jobs/finetune.py (or merge.py) on the host that holds the base
model, through the host's runtime, under the job-program contract.

A fine-tune fetches the exact dataset version it trains on (the internal route, sha256-verified, cached on the
host), writes its spec into its output directory under CHECKPOINT_DIR and always asks the program to resume from
the newest complete checkpoint there, so a retry after a killed worker (or a resume after a cancel) continues where
it stopped. A worker that dies leaves the program running in its own session: the next attempt adopts it by its
label instead of starting a second one. Checkpoints are recorded and tiered as they appear; the adapter (or model)
moves into the host's model store and is registered with its lineage.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from django.conf import settings

from deployments.datasets.fetch import fetch_token
from deployments.finetune import services
from deployments.models import DatasetVersion, Job, ModelArtifact
from workers.checkpoints import apply_tiers, checkpoint_recorded
from workers.datasets import DatasetFetchError, fetch_dataset_version
from workers.handlers.artifacts import publish_output
from workers.handlers.programs import ProgramRun
from workers.jobs.manifest import read_manifest
from workers.runner import Handler, JobCancelled, JobContext, JobFailure, register


def output_dir(job: Job) -> Path:
    return Path(settings.CHECKPOINT_DIR) / f"finetune-{job.pk}"


def _device_env(job: Job) -> dict[str, str]:
    # The placed GPUs only; none at all on a CPU host (the program then trains in fp32 on the CPU).
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in job.params.get("gpu_indexes") or [])}


@register("finetune")
class FinetuneHandler(Handler):
    def run(self, ctx: JobContext) -> dict:
        job = ctx.job
        base = ModelArtifact.objects.select_related("repo", "host").get(pk=job.params["base_artifact_id"])
        version = DatasetVersion.objects.select_related("dataset").get(pk=job.params["dataset_version_id"])
        out = output_dir(job)
        run = ProgramRun(ctx, base.host.runtime, on_checkpoint=lambda event: self._checkpoint(ctx, event))

        def start() -> None:
            try:
                dataset = fetch_dataset_version(version, fetch_token(job, version), log=ctx.log)
            except DatasetFetchError as error:
                raise JobFailure(
                    str(error),
                    cause="dataset_fetch",
                    next_step="Check that this host reaches the console (CONSOLE_INTERNAL_URL), then resume.",
                ) from error
            spec = {
                **job.params["options"],
                "base_model": base.path,
                "dataset": str(dataset),
                "output_dir": str(out),
                "resume_from": "latest",
            }
            gpus = len(job.params.get("gpu_indexes") or [])
            run.start("finetune", spec, out, env=_device_env(job), processes=max(gpus, 1))

        outcome = run.attempt(start)
        result = outcome.result or {}
        produced = Path(result.get("path") or "")
        manifest = read_manifest(produced) if produced.is_dir() else None
        if manifest is None:
            raise JobFailure(
                "The program reported a result, but its output has no manifest.",
                cause="output_missing",
                next_step="Resume the fine-tune: it continues from the newest checkpoint.",
            )
        what = "adapter" if result.get("kind") == "adapter" else "model"
        home = services.output_home(base, job, what)
        publish_output(produced, home)
        artifact = services.finetune_finished(job=job, result=result, path=home, manifest=manifest)
        ctx.log(f"registered {artifact.get_kind_display()} {artifact.repo.repo_id} at {home}")
        return {
            "artifact": artifact.pk,
            "kind": artifact.kind,
            "path": str(home),
            "steps": result.get("step"),
            "metrics": result.get("metrics") or {},
            "training_seconds": result.get("training_seconds"),
        }

    def _checkpoint(self, ctx: JobContext, event: dict) -> None:
        checkpoint = checkpoint_recorded(ctx.job, event)
        ctx.event("checkpoint", {"step": checkpoint.step, "path": checkpoint.path, "size": checkpoint.size})
        apply_tiers(ctx.job, log=ctx.log)

    def finished(self, ctx: JobContext, status: str) -> None:
        # Checkpoints stay (tiered, within CHECKPOINT_RETAIN): a run can be evaluated or continued from them.
        services.release(ctx.job)


@register("merge")
class MergeHandler(Handler):
    def run(self, ctx: JobContext) -> dict:
        job = ctx.job
        adapter = ModelArtifact.objects.select_related("repo", "host", "base__repo", "base__host").get(
            pk=job.params["adapter_artifact_id"]
        )
        work = Path(settings.CHECKPOINT_DIR) / f"merge-{job.pk}"
        produced = work / "model"
        run = ProgramRun(ctx, adapter.host.runtime)
        began = time.monotonic()

        def start() -> None:
            shutil.rmtree(produced, ignore_errors=True)
            spec = {
                "base_model": adapter.base.path,
                "adapter": adapter.path,
                "output_dir": str(produced),
                "precision": job.params.get("precision") or "auto",
            }
            run.start("merge", spec, work)

        run.attempt(start)
        if ctx.should_cancel():
            # merge.py does not stop midway; a merge cancelled while it ran registers nothing (finished() clears it).
            raise JobCancelled
        manifest = read_manifest(produced)
        if manifest is None:
            raise JobFailure("The merged model has no manifest.", cause="output_missing", next_step="Merge again.")
        home = services.output_home(adapter.base, job, "merged")
        publish_output(produced, home)
        seconds = round(time.monotonic() - began, 3)  # this attempt's share, when a retry adopted the program
        artifact = services.merge_finished(job=job, path=home, manifest=manifest, seconds=seconds)
        ctx.log(f"registered the merged model {artifact.repo.repo_id} at {home}")
        return {"artifact": artifact.pk, "path": str(home)}

    def finished(self, ctx: JobContext, status: str) -> None:
        shutil.rmtree(Path(settings.CHECKPOINT_DIR) / f"merge-{ctx.job.pk}", ignore_errors=True)

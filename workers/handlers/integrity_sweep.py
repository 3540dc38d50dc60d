"""The integrity_sweep job kind, on a host's queue: re-hash the host's copies against their manifests (throttled to
INTEGRITY_SWEEP_MB_S), recording the files done about once a second so a restarted sweep goes on where it stopped;
measure the model store's disk. With params {"restore": "redownload"|"recheck"} it repairs one corrupt copy instead."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from django.conf import settings

from console.accounts.models import Credential
from deployments.models import Job, ModelArtifact
from deployments.monitoring import health_services
from deployments.registry import downloads
from deployments.registry.services import source_token
from workers import integrity
from workers.handlers.artifacts import artifact_of, model_store, staging_dir
from workers.runner import Handler, JobCancelled, JobContext, JobFailure, register

# Files hashed are recorded in batches at most this often: one write per file (a transaction rewriting the run's
# progress) cost 30 ms under load, a fifth of the hashing of a 192 MiB shard. A restart repeats at most this much.
RECORD_EVERY_S = 1.0


class _Recorder:
    """Collects the files of one copy as they are hashed and writes them to the run in batches."""

    def __init__(self, run_id: int, artifact: ModelArtifact) -> None:
        self.run_id, self.artifact = run_id, artifact
        self.pending: list[dict] = []
        self.flushed = time.monotonic()

    def add(self, check: dict) -> None:
        self.pending.append(check)
        if time.monotonic() - self.flushed >= RECORD_EVERY_S:
            self.flush()

    def flush(self) -> None:
        health_services.sweep_files_checked(self.run_id, self.artifact, self.pending)
        self.pending, self.flushed = [], time.monotonic()


def expected_hashes(artifact: ModelArtifact) -> dict[str, str]:
    """{path: sha256} the copy was verified against when it became ready (files_sha256, else its manifest)."""
    if artifact.files_sha256:
        return dict(artifact.files_sha256)
    files = artifact.manifest.get("files") if isinstance(artifact.manifest, dict) else None
    return {entry["path"]: entry["sha256"] for entry in files or [] if entry.get("sha256")}


def _credential_of(artifact: ModelArtifact) -> Credential | None:
    """The credential the copy was downloaded with (a gated repo needs it again)."""
    download = (
        Job.objects.filter(kind=Job.Kind.DOWNLOAD, target_type=artifact._meta.label_lower, target_id=str(artifact.pk))
        .order_by("-id")
        .first()
    )
    credential_id = (download.params or {}).get("credential_id") if download else None
    return Credential.objects.filter(pk=credential_id).first() if credential_id else None


@register("integrity_sweep")
class IntegritySweepHandler(Handler):
    def run(self, ctx: JobContext) -> dict:
        if ctx.job.params.get("restore"):
            return self._restore(ctx)
        return self._sweep(ctx)

    def _sweep(self, ctx: JobContext) -> dict:
        params = ctx.job.params
        run_id, host_name = params["run"], params["host"]
        checked = problems = 0
        artifacts = ModelArtifact.objects.select_related("repo", "host").in_bulk(params["artifacts"])
        total = len(params["artifacts"])
        for position, pk in enumerate(params["artifacts"], 1):
            artifact = artifacts.get(pk)
            if artifact is None or artifact.status not in health_services.SWEPT:
                continue  # deleted or replaced since the run started
            expected = expected_hashes(artifact)
            if not expected or not artifact.path:
                health_services.sweep_artifact_checked(
                    run_id, artifact, note="No manifest recorded: nothing to check this copy against."
                )
                continue
            done = health_services.sweep_files_done(run_id, pk)
            ctx.log(
                f"[{position}/{total}] {artifact}: {len(expected)} file(s), {len(done & set(expected))} done before"
            )

            recorder = _Recorder(run_id, artifact)

            def record(check: integrity.FileCheck, artifact=artifact, position=position, recorder=recorder) -> None:
                recorder.add({"path": check.path, **check.as_dict()})
                ctx.progress({"artifact": artifact.pk, "file": check.path, "position": position, "artifacts": total})
                if check.status != integrity.OK:
                    ctx.log(f"  {check.detail}")

            try:
                checked += len(
                    integrity.check_directory(
                        artifact.path,
                        expected,
                        done=done,
                        mb_s=settings.INTEGRITY_SWEEP_MB_S,
                        should_stop=ctx.should_cancel,
                        on_file=record,
                    )
                )
            except integrity.Stopped:
                raise JobCancelled() from None
            finally:
                recorder.flush()  # what was hashed before a cancel or an error is kept for the next attempt
            problems += len(health_services.sweep_artifact_checked(run_id, artifact))
        health_services.sweep_store_measured(run_id, host_name, integrity.disk_usage(model_store()))
        return {"files_checked": checked, "problems": problems}

    def _restore(self, ctx: JobContext) -> dict:
        artifact = artifact_of(ctx)
        expected = expected_hashes(artifact)
        if ctx.job.params["restore"] == "redownload":
            self._redownload(ctx, artifact, expected)
        bad = [
            check.detail
            for check in integrity.check_directory(artifact.path, expected, should_stop=ctx.should_cancel)
            if check.status != integrity.OK
        ]
        if bad:
            raise JobFailure(
                f"The copy is still corrupt: {'; '.join(bad)}",
                cause="model_files_corrupt",
                next_step=health_services.restore_next_step(artifact),
            )
        health_services.artifact_mark_verified(artifact)
        ctx.log(f"{artifact}: every file matches its manifest again")
        return {"restored": True, "files": len(expected)}

    def _redownload(self, ctx: JobContext, artifact: ModelArtifact, expected: dict[str, str]) -> None:
        """Fetch the files that do not match from the source at the pinned commit, verified, and put each in place."""
        bad = {
            check.path
            for check in integrity.check_directory(artifact.path, expected, should_stop=ctx.should_cancel)
            if check.status != integrity.OK
        }
        ctx.log(f"re-downloading {len(bad)} file(s): {', '.join(sorted(bad))}")
        if not bad:
            return
        repo, source = artifact.repo, artifact.repo.source
        token = source_token(source, _credential_of(artifact))
        staging = staging_dir(artifact).with_name(staging_dir(artifact).name + "-restore")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            snapshot = downloads.resolve(repo.repo_id, repo.commit, endpoint=source.url, token=token, kind=source.kind)
            files = [remote for remote in snapshot.files if remote.path in bad]
            hashes = downloads.download(
                snapshot,
                files,
                staging,
                endpoint=source.url,
                token=token,
                on_progress=lambda p: ctx.progress({"file": p.file, "done": p.done, "total": p.total}),
                should_cancel=ctx.should_cancel,
                chunk_size=settings.DOWNLOAD_CHUNK_BYTES,
            )
            for path in sorted(bad):
                if hashes.get(path) != expected[path]:
                    raise JobFailure(
                        f"{path} from {source.name} does not match the manifest's sha256.",
                        cause="checksum_mismatch",
                        next_step="The source changed the file at that commit; add the model again.",
                    )
                integrity.replace_file(staging / path, Path(artifact.path) / path)
        except downloads.Cancelled:
            raise JobCancelled() from None
        except downloads.DownloadError as error:
            raise JobFailure(str(error), cause=error.cause, next_step=error.next_step) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def finished(self, ctx: JobContext, status: str) -> None:
        if ctx.job.params.get("run") and not ctx.job.params.get("restore"):
            health_services.sweep_job_finished(ctx.job.params["run"], ctx.job.pk)
        elif status != Job.Status.SUCCEEDED:
            ctx.log("the copy stays marked corrupt")

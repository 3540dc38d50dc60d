"""Job kinds of the model registry: download, import, delete. Each runs on the target host's queue."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

import audit
from workers.runner import Handler, JobCancelled, JobContext, JobFailure, register


def _artifact(ctx: JobContext):
    from deployments.models import ModelArtifact

    return ModelArtifact.objects.select_related("repo__source", "host").get(pk=ctx.job.target_id)


def _store() -> Path:
    return Path(settings.MODEL_STORE)


def staging_dir(artifact) -> Path:
    return _store() / ".staging" / f"artifact-{artifact.pk}"


def final_dir(artifact) -> Path:
    org_name = artifact.repo.repo_id.replace("/", "--")
    return _store() / org_name / artifact.repo.commit


def _failure(error) -> JobFailure:
    return JobFailure(str(error), cause=getattr(error, "cause", "error"), next_step=getattr(error, "next_step", ""))


@register("download")
class DownloadHandler(Handler):
    """Resolve, choose files, check space, download resumably with verification, publish atomically."""

    def run(self, ctx: JobContext) -> dict:
        from deployments.models import ModelArtifact
        from deployments.services.models import source_token

        artifact = _artifact(ctx)
        repo, source = artifact.repo, artifact.repo.source
        ModelArtifact.objects.filter(pk=artifact.pk).update(status=ModelArtifact.Status.DOWNLOADING)
        credential = None
        if ctx.job.params.get("credential_id"):
            from console.models import Credential

            credential = Credential.objects.filter(pk=ctx.job.params["credential_id"]).first()
        token = source_token(source, credential)
        # Every redirect the source answers with is checked against the allow-list before it is followed
        # (resolve and all file downloads share this thread's huggingface_hub session).
        from huggingface_hub.utils import get_session

        from deployments.endpoints import RedirectRefused, redirect_guard
        from deployments.models import AllowedEndpoint

        session = get_session()
        guard = redirect_guard(list(AllowedEndpoint.objects.values_list("pattern", flat=True)))
        session.hooks["response"].append(guard)
        try:
            return self._download(ctx, artifact, repo, source, credential, token)
        except RedirectRefused as refused:
            raise JobFailure(
                refused.message,
                cause="endpoint_not_allowed",
                next_step="Ask an admin to allow that address, or use another mirror.",
            ) from None
        finally:
            session.hooks["response"].remove(guard)

    def _download(self, ctx, artifact, repo, source, credential, token) -> dict:
        from deployments import downloads
        from deployments.endpoints import check_url
        from deployments.models import ModelArtifact

        try:
            if source.endpoint:
                check_url(source.endpoint)
            snapshot = downloads.resolve(repo.repo_id, repo.commit, endpoint=source.url, token=token)
            files = downloads.choose_files(snapshot.files, include=ctx.job.params.get("include") or None)
            staging, final = staging_dir(artifact), final_dir(artifact)
            staging.mkdir(parents=True, exist_ok=True)
            downloads.check_space(files, staging)
            total = sum(f.size for f in files)
            ctx.log(f"{repo.repo_id}@{snapshot.commit}: {len(files)} file(s), {total / 1e9:.2f} GB into {final}")
            ModelArtifact.objects.filter(pk=artifact.pk).update(bytes_total=total)

            def on_progress(p) -> None:
                data = {
                    "file": p.file,
                    "file_done": p.file_done,
                    "file_total": p.file_total,
                    "done": p.done,
                    "total": p.total,
                    "rate_bps": round(p.rate_bps),
                    "eta_s": p.eta_s,
                }
                ctx.progress(data)
                ModelArtifact.objects.filter(pk=artifact.pk).update(bytes_done=p.done)

            hashes = downloads.download(
                snapshot,
                files,
                staging,
                endpoint=source.url,
                token=token,
                on_progress=on_progress,
                should_cancel=ctx.should_cancel,
                chunk_size=settings.DOWNLOAD_CHUNK_BYTES,
            )
            final.parent.mkdir(parents=True, exist_ok=True)
            manifest = {
                "source": source.name,
                "endpoint": source.url,
                "repo": repo.repo_id,
                "commit": snapshot.commit,
                "requested_revision": repo.requested_revision,
                "downloaded_at": timezone.now().isoformat(),
                "actor": ctx.job.actor.get_username() if ctx.job.actor else "",
                "job": ctx.job.pk,
                "files": [{"path": f.path, "size": f.size, "sha256": hashes[f.path]} for f in files],
            }
            downloads.publish(staging, final, manifest)
        except downloads.Cancelled:
            raise JobCancelled() from None
        except downloads.DownloadError as error:
            raise _failure(error) from None
        with transaction.atomic():
            ModelArtifact.objects.filter(pk=artifact.pk).update(
                status=ModelArtifact.Status.READY,
                path=str(final),
                files_sha256=hashes,
                manifest=manifest,
                bytes_done=total,
                ready_at=timezone.now(),
            )
            audit.record(
                action="model.downloaded",
                actor=None,
                actor_name=f"agent:{artifact.host.name}",
                target=artifact,
                detail={"files": len(files), "bytes": total, "commit": snapshot.commit},
            )
        ctx.progress(
            {"done": total, "total": total, "file": "", "file_done": 0, "file_total": 0, "rate_bps": 0, "eta_s": 0},
            force=True,
        )
        return {"path": str(final), "files": len(files), "bytes": total}

    def finished(self, ctx: JobContext, status: str) -> None:
        from deployments import downloads
        from deployments.models import Job, ModelArtifact

        if status == Job.Status.SUCCEEDED:
            return
        artifact = _artifact(ctx)
        outcome = ModelArtifact.Status.CANCELLED if status == Job.Status.CANCELLED else ModelArtifact.Status.FAILED
        ModelArtifact.objects.filter(pk=artifact.pk).update(status=outcome)
        if status == Job.Status.CANCELLED and ctx.job.cancel_delete_partial:
            downloads.discard(staging_dir(artifact))
            ModelArtifact.objects.filter(pk=artifact.pk).update(bytes_done=0)
            ctx.log("partial files deleted")
        elif status == Job.Status.CANCELLED:
            ctx.log(f"partial files kept in {staging_dir(artifact)} for a later resume")


@register("import")
class ImportHandler(Handler):
    """Validate a directory already on the host, hash every file, and write its manifest."""

    def run(self, ctx: JobContext) -> dict:
        from console.errors import ApplicationError
        from deployments import downloads
        from deployments.models import ModelArtifact
        from deployments.services.models import import_directory

        artifact = _artifact(ctx)
        try:  # the host's own settings decide too
            directory = Path(import_directory(artifact.path))
        except ApplicationError as error:
            raise JobFailure(
                error.message, cause="not_allowed", next_step="Copy the model under an import root."
            ) from None
        if not directory.is_dir():
            raise JobFailure(
                f"{directory} is not a directory on {artifact.host.name}.",
                cause="not_found",
                next_step="Check the path on that host (copy the model there first).",
            )
        problems = downloads.validate_layout(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
        if problems:
            raise JobFailure(
                "; ".join(problems),
                cause="invalid_layout",
                next_step="A model directory needs config.json, a tokenizer and weights.",
            )
        try:
            files = downloads.hash_directory(
                directory,
                should_cancel=ctx.should_cancel,
                on_progress=lambda p: ctx.progress({"done": p.done, "total": p.total, "file": p.file}),
            )
        except downloads.Cancelled:
            raise JobCancelled() from None
        hashes = {path: info[1] for path, info in files.items()}
        total = sum(info[0] for info in files.values())
        manifest = {
            "source": "local directory",
            "path": str(directory),
            "imported_at": timezone.now().isoformat(),
            "actor": ctx.job.actor.get_username() if ctx.job.actor else "",
            "job": ctx.job.pk,
            "files": [{"path": p, "size": s, "sha256": h} for p, (s, h) in sorted(files.items())],
        }
        (directory / "manifest.json").write_text(json.dumps(manifest, indent=1))
        with transaction.atomic():
            ModelArtifact.objects.filter(pk=artifact.pk).update(
                status=ModelArtifact.Status.READY,
                files_sha256=hashes,
                manifest=manifest,
                bytes_done=total,
                bytes_total=total,
                ready_at=timezone.now(),
            )
            artifact.repo.__class__.objects.filter(pk=artifact.repo_id).update(total_size=total)
            audit.record(
                action="model.imported",
                actor=None,
                actor_name=f"agent:{artifact.host.name}",
                target=artifact,
                detail={"files": len(files), "bytes": total},
            )
        return {"files": len(files), "bytes": total}

    def finished(self, ctx: JobContext, status: str) -> None:
        from deployments.models import Job, ModelArtifact

        if status != Job.Status.SUCCEEDED:
            ModelArtifact.objects.filter(pk=ctx.job.target_id).update(status=ModelArtifact.Status.FAILED)


@register("delete")
class DeleteHandler(Handler):
    """Remove a downloaded copy's files (never an imported directory's: those belong to whoever copied them)."""

    def run(self, ctx: JobContext) -> dict:
        from deployments.models import ModelArtifact

        artifact = _artifact(ctx)
        removed = False
        if artifact.path and not artifact.imported:
            path = Path(artifact.path).resolve()
            if _store().resolve() in path.parents and path.exists():
                shutil.rmtree(path)
                removed = True
        shutil.rmtree(staging_dir(artifact), ignore_errors=True)
        with transaction.atomic():
            ModelArtifact.objects.filter(pk=artifact.pk).update(status=ModelArtifact.Status.DELETED, bytes_done=0)
            audit.record(
                action="model.deleted",
                actor=None,
                actor_name=f"agent:{artifact.host.name}",
                target=artifact,
                detail={"path": artifact.path, "files_removed": removed},
            )
        return {"removed": removed}

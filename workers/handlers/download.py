"""The download job kind: resolve, choose files, check space, download resumably, verify, publish."""

from __future__ import annotations

import shutil
from pathlib import Path

from django.conf import settings
from django.utils import timezone
from django.utils.translation import gettext as _

from console.accounts.models import Credential
from deployments.models import Job, ModelArtifact
from deployments.monitoring import instruments
from deployments.registry import downloads, layout
from deployments.registry.endpoints import RedirectRefused, allow_listed_hops, check_url
from deployments.registry.network import unreachable
from deployments.registry.services import source_token
from workers.handlers.artifacts import artifact_of, failure_of, final_dir, mark_ready, model_store, staging_dir
from workers.runner import Handler, JobCancelled, JobContext, JobFailure, register

# Causes after which the next attempt resumes from the bytes on disk (when there are some).
RESUMABLE_CAUSES = {"network", "no_space", "rate_limited"}


def bytes_kept(staging: Path) -> int:
    """Bytes of model files (finished or .part) a retry would resume from."""
    if not staging.is_dir():
        return 0
    return sum(p.stat().st_size for p in staging.rglob("*") if p.is_file() and not p.name.startswith("."))


def download_failure(error: downloads.DownloadError, *, endpoint: str, staging: Path) -> JobFailure:
    """The job's failure: a source that cannot be reached as the same sentence the pages say ("Cannot reach
    <host>: <reason>."), with a next step; "bytes already downloaded are kept" only when some are."""
    found = unreachable(error, url=endpoint)
    failure = JobFailure(found.message, cause="network", next_step=found.next_step()) if found else failure_of(error)
    if failure.cause in RESUMABLE_CAUSES:
        failure.next_step = f"{failure.next_step} {kept_note(staging)}".strip()
    return failure


def kept_note(staging: Path) -> str:
    """ "<size> already downloaded are kept: ...", or nothing when no bytes are."""
    kept = bytes_kept(staging)
    if not kept:
        return ""
    return _("%(size)s already downloaded are kept: a retry resumes where it stopped.") % {
        "size": f"{kept / 1e9:.2f} GB" if kept >= 10**7 else f"{kept:,} bytes"
    }


def store_full_failure(
    error: downloads.DownloadError, *, host: str, repo: str, staging: Path, files: list, margin: int
) -> JobFailure:
    """A full model store said as the host's: how much is still to come, how much is free, and how much to free
    (what a retry's space check will ask for) or to choose another host; the disk's own detail follows."""
    needed = downloads.required_space(files, staging)
    free = shutil.disk_usage(staging if staging.exists() else model_store()).free
    short = max(needed + margin - free, 0)
    sizes = {"host": host, "repo": repo, "store": model_store(), "needed": _mib(needed), "free": _mib(free)}
    lead = _(
        "The model store on %(host)s is full: %(needed)s MiB of %(repo)s are still to download, %(free)s MiB are free."
    )
    step = _("Free at least %(short)s MiB in %(store)s on %(host)s, or choose another host for the model; then retry.")
    next_step = f"{step % {**sizes, 'short': _mib(short)}} {kept_note(staging)}".strip()
    return JobFailure(f"{lead % sizes} {error.message}", cause="no_space", next_step=next_step)


def _mib(size: int) -> str:
    return f"{-(-size // 2**20):,}"  # rounded up: freeing the stated amount is enough


@register("download")
class DownloadHandler(Handler):
    """Resolve, choose files, check space, download resumably with verification, publish atomically."""

    def run(self, ctx: JobContext) -> dict:
        artifact = artifact_of(ctx)
        repo, source = artifact.repo, artifact.repo.source
        ModelArtifact.objects.filter(pk=artifact.pk).update(status=ModelArtifact.Status.DOWNLOADING)
        credential = None
        if ctx.job.params.get("credential_id"):
            credential = Credential.objects.filter(pk=ctx.job.params["credential_id"]).first()
        token = source_token(source, credential)
        # Every redirect the source answers with is checked against the allow-list before it is followed
        # (resolve and all file downloads share this thread's huggingface_hub session).
        try:
            with allow_listed_hops():
                return self._download(ctx, artifact, repo, source, credential, token)
        except RedirectRefused as refused:
            raise JobFailure(
                refused.message,
                cause="endpoint_not_allowed",
                next_step="Ask an admin to allow that address, or use another mirror.",
            ) from None

    def _download(self, ctx, artifact, repo, source, credential, token) -> dict:
        files: list = []  # what a full disk's message counts, once chosen
        try:
            if source.endpoint:
                check_url(source.endpoint)
            snapshot = downloads.resolve(repo.repo_id, repo.commit, endpoint=source.url, token=token, kind=source.kind)
            files = downloads.choose_files(snapshot.files, include=ctx.job.params.get("include") or None)
            staging, final = staging_dir(artifact), final_dir(artifact)
            layout.ensure_store(model_store())  # 0755: never made 0700 by the umask as a parent of the staging
            staging.mkdir(parents=True, exist_ok=True)
            downloads.check_space(files, staging, margin=settings.DOWNLOAD_FREE_MARGIN_BYTES)
            total = sum(f.size for f in files)
            ctx.log(f"{repo.repo_id}@{snapshot.commit}: {len(files)} file(s), {total / 1e9:.2f} GB into {final}")
            ModelArtifact.objects.filter(pk=artifact.pk).update(bytes_total=total)
            counted = [bytes_kept(staging)]  # the bytes an earlier attempt left are not downloaded again

            def on_progress(p) -> None:
                instruments.downloaded(p.done - counted[0])
                counted[0] = p.done
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
            layout.make_store_dirs(model_store(), final.parent)  # <org>--<name>: servers walk through it
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
            if error.cause != "no_space":
                raise download_failure(error, endpoint=source.url, staging=staging_dir(artifact)) from None
            raise store_full_failure(
                error,
                host=artifact.host.name,
                repo=repo.repo_id,
                staging=staging_dir(artifact),
                files=files,
                margin=settings.DOWNLOAD_FREE_MARGIN_BYTES,
            ) from None
        mark_ready(
            artifact,
            action="model.downloaded",
            files_sha256=hashes,
            manifest=manifest,
            total=total,
            path=final,
            detail={"files": len(files), "bytes": total, "commit": snapshot.commit},
        )
        ctx.progress(
            {"done": total, "total": total, "file": "", "file_done": 0, "file_total": 0, "rate_bps": 0, "eta_s": 0},
            force=True,
        )
        return {"path": str(final), "files": len(files), "bytes": total}

    def finished(self, ctx: JobContext, status: str) -> None:
        if status == Job.Status.SUCCEEDED:
            return
        artifact = artifact_of(ctx)
        outcome = ModelArtifact.Status.CANCELLED if status == Job.Status.CANCELLED else ModelArtifact.Status.FAILED
        ModelArtifact.objects.filter(pk=artifact.pk).update(status=outcome)
        if status == Job.Status.CANCELLED and ctx.job.cancel_delete_partial:
            downloads.discard(staging_dir(artifact))
            ModelArtifact.objects.filter(pk=artifact.pk).update(bytes_done=0)
            ctx.log("partial files deleted")
        elif status == Job.Status.CANCELLED:
            ctx.log(f"partial files kept in {staging_dir(artifact)} for a later resume")

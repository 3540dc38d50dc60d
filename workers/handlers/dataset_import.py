"""The dataset_import job kind: one file of a Hub dataset repo, at the commit the request pinned, downloaded with the
registry's download engine (Range resume from the .part on disk, retries, sha256 or git blob id checked), then
registered as the dataset's next version through the upload path (validated by line, hashed, versioned; nothing
registered when it fails). The source repo@commit and path go into the job's result and a `dataset.imported` event.

Crash safety: the staging directory is named after the file (source, repo, commit, path), so a retry after a killed
worker resumes from the bytes there; the DatasetUpload the file becomes has an id derived from the job, so a retry
finds the one an earlier attempt created instead of registering twice."""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path, PurePosixPath

from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404

import audit
from audit.models import AuditEvent
from console.accounts.models import Credential
from console.errors import ApplicationError
from deployments.datasets import services as datasets
from deployments.datasets import storage
from deployments.datasets.errors import DatasetInvalid
from deployments.datasets.models import Dataset, DatasetUpload, DatasetVersion
from deployments.datasets.validation import describe
from deployments.models import Job, ModelSource
from deployments.registry import downloads
from deployments.registry.endpoints import RedirectRefused, allow_listed_hops, check_url
from deployments.registry.services import source_token
from workers.handlers.download import RESUMABLE_CAUSES, download_failure
from workers.runner import Handler, JobCancelled, JobContext, JobFailure, register

UPLOADS = uuid.UUID("5d7c2a8e-0b7e-4c57-9a52-3f1f6f0c2d11")  # namespace of the uploads imports become
PROBLEMS_SAID = 3  # a refused file's failure names its first problems by line


def upload_id(job: Job) -> uuid.UUID:
    return uuid.uuid5(UPLOADS, f"dataset_import:{job.pk}")


def staging_dir(params: dict) -> Path:
    """Where the file is downloaded: one directory per source, repo, commit and path (not per job)."""
    key = "\0".join(str(params[name]) for name in ("source_id", "repo_id", "commit", "path"))
    return storage.store() / "imports" / hashlib.sha256(key.encode()).hexdigest()[:24]


def remote_file(params: dict) -> downloads.RemoteFile:
    """The file as the request resolved it at its commit: what the bytes are checked against."""
    return downloads.RemoteFile(
        path=params["path"],
        size=int(params["size"]),
        sha256=params.get("sha256") or None,
        blob_id=params.get("blob_id") or None,
        lfs=bool(params.get("lfs")),
    )


def dataset_endpoint(source: ModelSource) -> str:
    """The base the engine puts `<repo>/resolve/<commit>/<path>` after: a dataset repo's files live under
    `<hub>/datasets/`, so the engine's model-repo URLs, built on this base, are the dataset repo's."""
    return f"{source.url}/datasets"


@register("dataset_import")
class DatasetImportHandler(Handler):
    """Download one dataset file resumably and verified, then register it as a version."""

    def run(self, ctx: JobContext) -> dict:
        if settings.GPU_AGENT:  # DATASET_STORE is the console's disk: an agent that shares the queue cannot write it
            raise JobFailure(
                "A GPU agent took this dataset import; imports run on the console's worker, beside DATASET_STORE.",
                cause="wrong_worker",
                next_step="Import again; ask an admin to keep the console's queue (celery) off the GPU agents' -Q.",
            )
        params = ctx.job.params
        dataset = Dataset.objects.filter(pk=params["dataset_id"]).first()
        source = ModelSource.objects.filter(pk=params["source_id"]).first()
        if dataset is None or source is None:
            raise JobFailure(
                "The dataset or the source was deleted after the import was asked for.",
                cause="gone",
                next_step="Nothing to import into; start again from the dataset's page.",
            )
        upload = DatasetUpload.objects.filter(pk=upload_id(ctx.job)).first()
        if upload is not None and upload.status == DatasetUpload.Status.DONE and upload.version is not None:
            ctx.log("registered by an earlier attempt")
            return self._imported(ctx, dataset, upload.version)
        if upload is not None and upload.status == DatasetUpload.Status.FAILED:
            raise _invalid(ctx, upload.errors, f"{upload.filename} was refused by an earlier attempt.")
        part = storage.part_path(upload_id(ctx.job))
        if upload is None or not (part.exists() and part.stat().st_size == upload.size):
            sha256 = self._download(ctx, source)
            upload = self._hand_over(ctx, dataset, upload, sha256)
        if ctx.should_cancel():
            raise JobCancelled()
        ctx.log(f"validating {params['path']} ({params['size']} bytes, {params['format']})")
        version = self._register(ctx, upload)
        return self._imported(ctx, dataset, version)

    # -- download --------------------------------------------------------------------------------------------------

    def _download(self, ctx: JobContext, source: ModelSource) -> str:
        """The verified file in staging; its sha256."""
        params = ctx.job.params
        remote, staging = remote_file(params), staging_dir(params)
        credential = Credential.objects.filter(pk=params["credential_id"]).first() if params["credential_id"] else None
        token = source_token(source, credential)
        snapshot = downloads.RepoSnapshot(
            repo_id=params["repo_id"],
            revision=params["revision"],
            commit=params["commit"],
            files=[remote],
            gated=False,
            private=False,
            license=None,
        )
        kept = _part_bytes(staging, remote.path)
        where = f" (resuming after {kept} bytes on disk)" if kept else ""
        ctx.log(f"{params['repo_id']}@{params['commit']}: {remote.path}, {remote.size} bytes{where}")
        try:
            if source.endpoint:
                check_url(source.endpoint)
            with allow_listed_hops():  # every request and redirect checked against the allow-list
                hashes = downloads.download(
                    snapshot,
                    [remote],
                    staging,
                    endpoint=dataset_endpoint(source),
                    token=token,
                    on_progress=lambda p: ctx.progress(_progress(p)),
                    should_cancel=ctx.should_cancel,
                    chunk_size=settings.DOWNLOAD_CHUNK_BYTES,
                )
        except downloads.Cancelled:
            raise JobCancelled() from None
        except downloads.DownloadError as error:
            raise download_failure(error, endpoint=source.url, staging=staging) from None
        except (RedirectRefused, ApplicationError) as refused:
            raise JobFailure(
                refused.message,
                cause="endpoint_not_allowed",
                next_step="Ask an admin to allow that address, or use another mirror.",
            ) from None
        ctx.progress(_progress_done(remote.size), force=True)
        ctx.log(f"verified: sha256 {hashes[remote.path]}")
        return hashes[remote.path]

    def _hand_over(self, ctx: JobContext, dataset: Dataset, upload: DatasetUpload | None, sha256: str):
        """The verified file becomes a fully received upload (the row first, so a retry finds it; then the file)."""
        params = ctx.job.params
        if upload is None:
            upload = DatasetUpload.objects.create(
                id=upload_id(ctx.job),
                dataset=dataset,
                filename=PurePosixPath(params["path"]).name[:255],
                format=params["format"],
                size=int(params["size"]),
                received=int(params["size"]),
                sha256=sha256,
                created_by=ctx.job.actor,
            )
        part = storage.part_path(upload.pk)
        part.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging_dir(params) / params["path"], part)
        downloads.discard(staging_dir(params))
        return upload

    # -- registration ------------------------------------------------------------------------------------------------

    def _register(self, ctx: JobContext, upload: DatasetUpload) -> DatasetVersion:
        """The upload path's completion: hashed and validated in one pass, then registered in one transaction."""
        actor = ctx.job.actor
        try:
            if actor is None:
                raise PermissionDenied
            return datasets.upload_complete(actor=actor, upload=upload, sha256=upload.sha256)
        except (PermissionDenied, Http404):
            raise JobFailure(
                "The person who asked for this import may no longer manage the dataset.",
                cause="permission_denied",
                next_step="Someone who manages the dataset can import it again.",
            ) from None
        except DatasetInvalid as invalid:
            raise _invalid(ctx, invalid.errors, invalid.message) from None
        except ApplicationError as refused:  # the same file is a version already; changed bytes on disk
            cause = "checksum_mismatch" if refused.field == "sha256" else "refused"
            raise JobFailure(refused.message, cause=cause, next_step="") from None

    def _imported(self, ctx: JobContext, dataset: Dataset, version: DatasetVersion) -> dict:
        """The job's result and the provenance event (once, also when a retry finds the version registered)."""
        params = ctx.job.params
        result = {
            "dataset": dataset.pk,
            "version": version.version,
            "sha256": version.sha256,
            "size": version.size,
            "rows": version.row_count,
            "source": params["source"],
            "repo_id": params["repo_id"],
            "revision": params["revision"],
            "commit": params["commit"],
            "path": params["path"],
            "job": ctx.job.pk,
        }
        with transaction.atomic():
            done = AuditEvent.objects.filter(
                action="dataset.imported", target_type=Dataset._meta.label_lower, target_id=str(dataset.pk)
            ).filter(detail__contains=str(upload_id(ctx.job)))
            if not done.exists():
                detail = {**result, "upload": str(upload_id(ctx.job))}
                audit.record(action="dataset.imported", actor=ctx.job.actor, target=dataset, detail=detail)
        ctx.log(f"version {version.version} of {dataset.name}: {params['repo_id']}@{params['commit']} {params['path']}")
        return result

    def finished(self, ctx: JobContext, status: str) -> None:
        """After a cancel or a failure nothing of the import stays but resumable bytes (a network failure): the
        staging directory otherwise, and an upload that was handed over but not registered."""
        if status == Job.Status.SUCCEEDED or settings.GPU_AGENT:  # an agent holds none of it (see run)
            return
        params = ctx.job.params
        if ctx.failure_cause == "busy":  # another job is writing this very file: its bytes are not ours
            pass
        elif status == Job.Status.CANCELLED or ctx.failure_cause not in RESUMABLE_CAUSES:
            downloads.discard(staging_dir(params))
        else:
            ctx.log(f"the bytes downloaded are kept in {staging_dir(params)}: importing the same file resumes them")
        pending = DatasetUpload.objects.filter(pk=upload_id(ctx.job), status=DatasetUpload.Status.RECEIVING)
        if pending.exists():
            pending.delete()
            storage.remove(storage.part_path(upload_id(ctx.job)))


def _invalid(ctx: JobContext, errors: list[dict], message: str) -> JobFailure:
    """A file that is no dataset: its problems by line in the log, the first ones in the failure (never a value)."""
    for problem in errors:
        ctx.log(describe(problem))
    first = "; ".join(describe(problem) for problem in errors[:PROBLEMS_SAID])
    return JobFailure(
        f"{message} {first}".strip(),
        cause="dataset_invalid",
        next_step="Fix the file in the repo (or choose another file or revision) and import it again.",
    )


def _part_bytes(staging: Path, path: str) -> int:
    part = staging / f"{path}.part"
    return part.stat().st_size if part.is_file() else 0


def _progress(p: downloads.Progress) -> dict:
    return {
        "file": p.file,
        "file_done": p.file_done,
        "file_total": p.file_total,
        "done": p.done,
        "total": p.total,
        "rate_bps": round(p.rate_bps),
        "eta_s": p.eta_s,
        "phase": p.phase,
    }


def _progress_done(total: int) -> dict:
    return {"done": total, "total": total, "file": "", "file_done": 0, "file_total": 0, "rate_bps": 0, "eta_s": 0}

"""The copy job kind: a ready model on one host becomes a ready copy on another, through the console's relay.

Two jobs make one copy, both targeting the new (destination) artifact: role "send" on the source host PUTs the
source artifact's files to the console; role "receive" on the destination host fetches them into staging, checks
every sha256 against the source's files_sha256, writes the manifest and renames the directory into the store. Neither
host reaches anything but CONSOLE_INTERNAL_URL."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from deployments.models import Job, ModelArtifact
from deployments.registry import layout
from deployments.registry.copies import copy_ended
from deployments.registry.copy_relay import RECEIVE, SEND, copy_token
from deployments.registry.downloads.staging import MANIFEST
from workers.handlers.artifacts import artifact_of, mark_ready, model_store
from workers.model_copy import CopyError, receive_files, send_files
from workers.runner import Handler, JobContext, JobFailure, register


def copy_dir(copy: ModelArtifact, source: ModelArtifact) -> Path:
    """Where the copy lives on its host: repo@commit as a download would put it; an import (no commit) by the
    artifact it was copied from."""
    if copy.repo.commit:
        return layout.artifact_dir(model_store(), copy.repo)
    return model_store() / copy.repo.repo_id.replace("/", "--") / f"copy-of-{source.pk}"


def _failure(error: CopyError, host: str) -> JobFailure:
    return JobFailure(
        str(error),
        cause="copy_failed",
        next_step=f"Check that {host} reaches CONSOLE_INTERNAL_URL, then copy the model again (it resumes).",
    )


def _progress(ctx: JobContext, total: int):
    """Bytes of whole files done, on the job (the model page shows the newest job's progress)."""
    return lambda done, name: ctx.progress({"done": done, "total": total, "file": name})


@register("copy")
class CopyHandler(Handler):
    """Send (on the source host) or receive (on the destination host) one host-to-host model copy."""

    def run(self, ctx: JobContext) -> dict:
        copy = artifact_of(ctx)
        source = ModelArtifact.objects.select_related("host", "repo").get(pk=ctx.job.params["source_artifact_id"])
        files = dict(source.files_sha256 or {})
        if source.status != ModelArtifact.Status.READY or not files:
            raise JobFailure(
                f"{source} is {source.get_status_display()} and lists {len(files)} verified files: only a ready "
                "model is copied.",
                cause="not_ready",
                next_step="Wait until the model is ready (or re-import it), then copy it again.",
            )
        base, token = settings.CONSOLE_INTERNAL_URL, copy_token(ctx.job)
        role = ctx.job.params.get("role")
        if role == SEND:
            ctx.log(f"Sending {len(files)} files of {source} to {base} for {copy.host.name}.")
            try:
                sent = send_files(
                    base,
                    copy.pk,
                    token,
                    Path(source.path),
                    files,
                    log=ctx.log,
                    cancelled=ctx.should_cancel,
                    progress=_progress(ctx, source.bytes_total),
                )
            except CopyError as error:
                raise _failure(error, source.host.name) from None
            return {"files": len(files), "bytes_sent": sent}
        if role != RECEIVE:
            raise JobFailure(f"Unknown copy role {role!r}.", cause="invalid", next_step="Copy the model again.")
        return self._receive(ctx, copy, source, files, base, token)

    def _receive(self, ctx, copy, source, files: dict, base: str, token: str) -> dict:
        ModelArtifact.objects.filter(pk=copy.pk).update(status=ModelArtifact.Status.DOWNLOADING)
        staging = layout.staging_dir(model_store(), copy.pk)
        layout.make_store_dirs(model_store(), staging)
        ctx.log(f"Receiving {len(files)} files of {source} from {base} into {staging}.")
        try:
            total = receive_files(
                base,
                copy.pk,
                token,
                files,
                staging,
                wait_s=float(settings.MODEL_COPY_WAIT_S),
                log=ctx.log,
                cancelled=ctx.should_cancel,
                progress=_progress(ctx, source.bytes_total),
            )
        except CopyError as error:
            raise _failure(error, copy.host.name) from None
        manifest = {
            **{key: value for key, value in (source.manifest or {}).items() if key != "files"},
            "copied_from": {"artifact": source.pk, "host": source.host.name, "path": source.path},
            "copied_at": timezone.now().isoformat(),
            "job": ctx.job.pk,
            "files": [
                {"path": path, "size": (staging / path).stat().st_size, "sha256": sha}
                for path, sha in sorted(files.items())
            ],
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
        final = copy_dir(copy, source)
        layout.make_store_dirs(model_store(), final.parent)
        layout.readable_by_servers(staging)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        mark_ready(
            copy,
            action="model.copied",
            files_sha256=files,
            manifest=manifest,
            total=total,
            path=final,
            detail={"from": source.host.name, "source_artifact": source.pk, "files": len(files), "bytes": total},
        )
        return {"path": str(final), "files": len(files), "bytes": total}

    def finished(self, ctx: JobContext, status: str) -> None:
        receiving = ctx.job.params.get("role") == RECEIVE
        if receiving:
            copy_ended(int(ctx.job.target_id))
        if status == Job.Status.SUCCEEDED:
            return
        ModelArtifact.objects.filter(pk=ctx.job.target_id).exclude(status=ModelArtifact.Status.READY).update(
            status=ModelArtifact.Status.FAILED
        )
        if not receiving:  # the receiver would wait for files that never come
            Job.objects.filter(
                kind=Job.Kind.COPY,
                target_type=ctx.job.target_type,
                target_id=ctx.job.target_id,
                status__in=Job.Status.active(),
                params__role=RECEIVE,
            ).update(cancel_requested=True)

"""Datasets: adding one, uploading a version in resumable chunks, previewing rows (audited), deleting.

An upload becomes a version only in upload_complete, in one transaction, after its file was hashed and validated
in a streaming pass; until then it is a part file and a row saying how many bytes arrived. A broken upload
registers nothing and resumes at `received`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Max

import audit
from console import roles
from console.errors import ApplicationError
from console.permissions import require_dataset, require_dataset_manager
from deployments.datasets import storage, validation
from deployments.datasets.errors import DatasetInvalid, UploadConflict, UploadTooLarge
from deployments.datasets.models import Dataset, DatasetUpload, DatasetVersion, Format
from deployments.jobs.models import Job

CHUNK_MAX_BYTES = 8 * 2**20
READ_BYTES = 1 << 16
PREVIEW_MAX_ROWS = 100
SHA256_HEX = frozenset("0123456789abcdef")
EXTENSIONS = {".jsonl": Format.JSONL, ".ndjson": Format.JSONL, ".json": Format.JSON, ".csv": Format.CSV}
EXTENSIONS[".parquet"] = Format.PARQUET


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


@transaction.atomic
def dataset_create(*, actor, name: str, team: Group, description: str = "") -> Dataset:
    """Add a dataset for a team. A user can add one when: they hold manage_datasets by role (admins), or the team is
    theirs and holds manage_datasets on itself (its data stewards)."""
    if team.name in roles.ROLES:
        raise ApplicationError("A dataset is owned by a team, not by a role group.", field="team")
    require_dataset_manager(actor, team=team)
    if Dataset.objects.filter(name=name).exists():
        raise ApplicationError(f"A dataset named '{name}' exists already.", field="name")
    dataset = Dataset(name=name, team=team, description=description, created_by=actor)
    dataset.full_clean()
    dataset.save()
    audit.record(action="dataset.added", actor=actor, target=dataset, detail={"team": team.name})
    return dataset


def format_for(filename: str, fmt: str = "") -> str:
    """The format asked for, else the one the file name says (.jsonl, .ndjson, .json, .csv, .parquet)."""
    if fmt:
        if fmt not in Format.values:
            raise ApplicationError(f"Unknown format '{fmt}'; one of {', '.join(Format.values)}.", field="format")
        return fmt
    found = EXTENSIONS.get(Path(filename).suffix.lower())
    if found is None:
        raise ApplicationError(
            "Say the format: the file name ends in none of .jsonl, .json, .csv, .parquet.", field="format"
        )
    return found


@transaction.atomic
def upload_start(
    *, actor, dataset: Dataset, filename: str, size: int, sha256: str = "", fmt: str = ""
) -> DatasetUpload:
    """Open an upload of a new version of `dataset`: `size` bytes, sent in chunks of at most 8 MiB."""
    require_dataset(actor, roles.MANAGE_DATASETS, dataset)
    limit = settings.DATASET_UPLOAD_MAX_BYTES
    if size > limit:
        raise UploadTooLarge(
            f"The file is {size} bytes; DATASET_UPLOAD_MAX_BYTES allows at most {limit} ({_mib(limit)}).", field="size"
        )
    if size <= 0:
        raise ApplicationError("The file is empty: a dataset needs rows.", field="size")
    sha256 = sha256.strip().lower()
    if sha256 and (len(sha256) != 64 or not set(sha256) <= SHA256_HEX):
        raise ApplicationError("sha256 is 64 hexadecimal digits.", field="sha256")
    upload = DatasetUpload.objects.create(
        dataset=dataset,
        filename=Path(filename).name[:255] or "dataset",
        format=format_for(filename, fmt),
        size=size,
        sha256=sha256,
        created_by=actor,
    )
    part = storage.part_path(upload.pk)
    part.parent.mkdir(parents=True, exist_ok=True)
    part.touch(mode=0o600)
    return upload


def _copy_chunk(stream: BinaryIO, part: Path, *, offset: int, length: int | None) -> int:
    """Append the request body to the part file at `offset`, in pieces; returns the bytes written. Over 8 MiB, or
    short of the announced length (a broken connection), nothing stays: the part file is cut back to `offset`."""
    written = 0
    with open(part, "r+b") as out:
        out.seek(offset)
        out.truncate(offset)  # bytes past `received` are what a broken chunk left
        try:
            while True:
                piece = stream.read(min(READ_BYTES, CHUNK_MAX_BYTES + 1 - written))
                if not piece:
                    break
                written += len(piece)
                if written > CHUNK_MAX_BYTES:
                    raise UploadTooLarge(f"A chunk is at most {CHUNK_MAX_BYTES} bytes (8 MiB).", field="chunk")
                out.write(piece)
            if length is not None and written != length:
                raise ApplicationError(
                    f"The chunk ended after {written} of {length} bytes; send it again from offset {offset}.",
                    field="chunk",
                )
        except BaseException:
            out.truncate(offset)
            raise
    return written


def upload_chunk(*, actor, upload: DatasetUpload, offset: int, stream: BinaryIO, length: int | None) -> DatasetUpload:
    """Write one chunk at `offset`, which must be where the upload stands (`received`): a resend of a chunk that
    arrived, or one that skips ahead, is a 409 that says where to go on."""
    require_dataset(actor, roles.MANAGE_DATASETS, upload.dataset)
    if length is not None and length > CHUNK_MAX_BYTES:
        raise UploadTooLarge(
            f"A chunk is at most {CHUNK_MAX_BYTES} bytes (8 MiB); this one is {length}.", field="chunk"
        )
    with transaction.atomic():
        upload = DatasetUpload.objects.select_for_update().get(pk=upload.pk)
        if upload.status != DatasetUpload.Status.RECEIVING:
            raise ApplicationError(f"This upload is {upload.get_status_display()}; start a new one.", field="upload")
        part = storage.part_path(upload.pk)
        if not part.exists():  # the store lost it (or was moved): start again from byte 0
            part.parent.mkdir(parents=True, exist_ok=True)
            part.touch(mode=0o600)
        on_disk = part.stat().st_size
        if on_disk < upload.received:  # the disk lost what it had acknowledged: resume from what is there
            upload.received = on_disk
            upload.save(update_fields=["received", "updated_at"])
        if offset != upload.received:
            raise UploadConflict(
                f"This upload stands at byte {upload.received}; send the chunk for that offset.",
                received=upload.received,
            )
        if length is not None and offset + length > upload.size:
            raise UploadTooLarge(
                f"This chunk would take the upload past its declared size of {upload.size} bytes.", field="chunk"
            )
        written = _copy_chunk(stream, part, offset=offset, length=length)
        if offset + written > upload.size:
            storage_cut(part, offset)
            raise UploadTooLarge(
                f"This chunk would take the upload past its declared size of {upload.size} bytes.", field="chunk"
            )
        upload.received = offset + written
        upload.save(update_fields=["received", "updated_at"])
    return upload


def storage_cut(part: Path, offset: int) -> None:
    with open(part, "r+b") as out:
        out.truncate(offset)


def _fail(upload: DatasetUpload, errors: list[dict]) -> None:
    upload.status, upload.errors = DatasetUpload.Status.FAILED, errors
    upload.save(update_fields=["status", "errors", "updated_at"])
    storage.remove(storage.part_path(upload.pk))


def upload_complete(*, actor, upload: DatasetUpload, sha256: str = "") -> DatasetVersion:
    """Turn a fully received upload into the dataset's next version: hash and validate the file in one streaming
    pass (outside any transaction: it can take a while), then register it in one transaction. A file with problems
    registers nothing; the upload keeps its first problems by line and field."""
    require_dataset(actor, roles.MANAGE_DATASETS, upload.dataset)
    if upload.status != DatasetUpload.Status.RECEIVING:
        raise ApplicationError(f"This upload is {upload.get_status_display()}; start a new one.", field="upload")
    if upload.received != upload.size:
        raise ApplicationError(
            f"{upload.received} of {upload.size} bytes arrived; send the rest from offset {upload.received}.",
            field="upload",
        )
    part = storage.part_path(upload.pk)
    if not part.exists():
        raise ApplicationError("The bytes of this upload are gone from the console; upload the file again.")
    report = validation.inspect(part, upload.format)
    expected = (sha256 or upload.sha256).strip().lower()
    if report.size != upload.size:
        _fail(upload, [])
        raise ApplicationError("The file on the console is not the size that arrived; upload it again.", field="file")
    if expected and expected != report.sha256:
        _fail(upload, [])
        raise ApplicationError(
            f"The file's sha256 is {report.sha256}, not {expected}: it changed on the way; upload it again.",
            field="sha256",
        )
    if report.error_count:
        _fail(upload, report.errors)
        raise DatasetInvalid(
            f"The file is not a usable dataset: {report.error_count} problem(s); the first are listed by line.",
            errors=report.errors,
            error_count=report.error_count,
        )
    return _register(actor=actor, upload=upload, report=report, part=part)


def _register(*, actor, upload: DatasetUpload, report: validation.Report, part: Path) -> DatasetVersion:
    moved: Path | None = None
    try:
        with transaction.atomic():
            upload = DatasetUpload.objects.select_for_update().get(pk=upload.pk)
            dataset = Dataset.objects.select_for_update().get(pk=upload.dataset_id)
            if upload.status != DatasetUpload.Status.RECEIVING:
                raise ApplicationError("This upload was completed already.", field="upload")
            same = dataset.versions.filter(sha256=report.sha256).first()
            if same is not None:
                raise ApplicationError(
                    f"This file is version {same.version} already (same sha256); nothing new to add.", field="file"
                )
            number = (dataset.versions.aggregate(top=Max("version"))["top"] or 0) + 1
            relpath = storage.version_relpath(
                dataset_id=dataset.pk, version=number, sha256=report.sha256, fmt=upload.format
            )
            target = storage.store() / relpath
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, target)
            moved = target
            os.chmod(target, 0o400)
            version = DatasetVersion.objects.create(
                dataset=dataset,
                version=number,
                sha256=report.sha256,
                size=report.size,
                format=upload.format,
                shape=report.shape,
                row_count=report.row_count,
                columns=report.columns,
                validation_errors=report.errors,
                status=DatasetVersion.Status.READY,
                path=relpath,
                created_by=actor,
            )
            upload.status, upload.version = DatasetUpload.Status.DONE, version
            upload.save(update_fields=["status", "version", "updated_at"])
            audit.record(action="dataset.versioned", actor=actor, target=dataset, detail=_version_detail(version))
    except BaseException:
        if moved is not None and moved.exists():  # nothing half-registered: the part file is back for a retry
            os.chmod(moved, 0o600)
            os.replace(moved, part)
        raise
    return version


def _version_detail(version: DatasetVersion) -> dict:
    """What the audit log says about a version: identity and counts, never a row."""
    return {
        "version": version.version,
        "sha256": version.sha256,
        "size": version.size,
        "format": version.format,
        "shape": version.shape,
        "rows": version.row_count,
    }


@transaction.atomic
def upload_abort(*, actor, upload: DatasetUpload) -> None:
    """Drop an upload that will not be completed, and its part file."""
    require_dataset(actor, roles.MANAGE_DATASETS, upload.dataset)
    part = storage.part_path(upload.pk)
    upload.delete()
    transaction.on_commit(lambda: storage.remove(part))


def version_references(version: DatasetVersion) -> list[str]:
    """What uses a version and so forbids deleting it. The hook for the jobs that train on datasets: a job names
    the exact version it used in `params["dataset_version_id"]` (a fine-tune records it for its lineage)."""
    # Statistics and imports only read or write the file; a fine-tune's lineage names the version for good.
    jobs = Job.objects.filter(params__dataset_version_id=version.pk, kind=Job.Kind.FINETUNE).order_by("pk")
    return [f"job {job.pk} ({job.kind})" for job in jobs]


def _refuse_if_used(versions) -> None:
    for version in versions:
        used = version_references(version)
        if used:
            raise ApplicationError(
                f"Version {version.version} is used by {', '.join(used)}; it stays for their lineage.", field="version"
            )


@transaction.atomic
def version_delete(*, actor, version: DatasetVersion) -> None:
    """Delete one version and its file, unless a job references it."""
    require_dataset(actor, roles.MANAGE_DATASETS, version.dataset)
    _refuse_if_used([version])
    path = storage.absolute(version.path)
    detail = _version_detail(version)
    dataset = version.dataset
    version.delete()
    audit.record(action="dataset.deleted", actor=actor, target=dataset, detail=detail)
    transaction.on_commit(lambda: storage.remove(path))


@transaction.atomic
def dataset_delete(*, actor, dataset: Dataset) -> None:
    """Delete a dataset with all its versions and uploads, unless a job references one of its versions."""
    require_dataset(actor, roles.MANAGE_DATASETS, dataset)
    versions = list(dataset.versions.all())
    _refuse_if_used(versions)
    files = [storage.absolute(v.path) for v in versions]
    files += [storage.part_path(pk) for pk in dataset.uploads.values_list("pk", flat=True)]
    detail = {"versions": [v.version for v in versions], "team": dataset.team.name}
    audit.record(action="dataset.deleted", actor=actor, target=dataset, detail=detail)
    dataset.delete()

    def remove_files() -> None:
        for path in files:
            storage.remove(path)

    transaction.on_commit(remove_files)


@transaction.atomic
def version_preview(*, actor, version: DatasetVersion, limit: int = 20) -> list[dict]:
    """The first rows of a version, for those who may read them (view_data by role or grant). Every preview is an
    audit event that says who read how many rows of which version; the rows themselves stay out of it."""
    require_dataset(actor, roles.VIEW_DATA, version.dataset)
    limit = max(1, min(int(limit), PREVIEW_MAX_ROWS))
    rows = validation.read_rows(storage.absolute(version.path), version.format, limit=limit)
    detail = {"version": version.version, "sha256": version.sha256, "rows_shown": len(rows)}
    audit.record(action="dataset.previewed", actor=actor, target=version.dataset, detail=detail)
    return rows

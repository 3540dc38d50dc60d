"""Agents fetch the dataset version a job trains on from the console: a job-scoped signed token, its check, and the
internal route that streams the version's file (sha256 as ETag, `Range: bytes=N-` to resume a broken transfer).

The route has no session and no CSRF check: agents hold neither. Only the token opens it, it opens only the file of
the one version it names, and only while its job is pending or running. The token is never logged, audited or
echoed back; a refusal is JSON {"detail": ...} with 401 (no or bad token), 403 (the job may not fetch this),
404 (no such version, or its file is gone) or 416 (a range past the end)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.core import signing
from django.core.handlers.asgi import ASGIRequest
from django.db import transaction
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt

import audit
from deployments.datasets import storage
from deployments.datasets.models import DatasetVersion
from deployments.jobs.models import Job

logger = logging.getLogger(__name__)

SALT = "llmdeploy.datasets.fetch.v1"  # its own salt: no other signed value of the console passes as a fetch token
READ_BYTES = 256 * 1024
RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class FetchRefused(Exception):
    """The fetch is refused; `status` is the HTTP answer, the message says why (never quoting the token)."""

    def __init__(self, message: str, *, status: int, size: int | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.size = message, status, size


@dataclass(frozen=True)
class Fetch:
    """What one authorized request serves: bytes `start`..`end` (inclusive) of the version's file."""

    job: Job
    version: DatasetVersion
    path: Path
    start: int
    end: int
    partial: bool

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def _keys() -> list[str]:
    # The agent mints the token (in the job's handler) and the console checks it, so the key is one both hold:
    # agents get SECRETS_ENCRYPTION_KEYS but never SECRET_KEY. HMAC through signing's own salted derivation, and
    # the older keys still verify while a rotation is rolled out.
    return [str(key) for key in settings.SECRETS_ENCRYPTION_KEYS]


def fetch_token(job: Job, version: DatasetVersion) -> str:
    """The token with which `job`'s agent fetches `version`; valid while the job is active and trains on it."""
    return signing.dumps({"job": job.pk, "version": version.pk}, key=_keys()[0], salt=SALT)


def check_fetch_token(token: str, version_id: int) -> Job:
    """The job a fetch token belongs to, if it may fetch version `version_id` now; FetchRefused otherwise."""
    newest, *older = _keys()
    try:
        claims = signing.loads(token, key=newest, fallback_keys=older, salt=SALT)
    except signing.BadSignature:
        raise FetchRefused(_("The fetch token is not valid."), status=401) from None
    if not isinstance(claims, dict) or claims.get("version") != version_id:
        raise FetchRefused(_("This fetch token is for another dataset version."), status=403)
    job = Job.objects.filter(pk=claims.get("job")).first()
    if job is None or not job.is_active:
        raise FetchRefused(
            _("Job %(job)s is not pending or running: its fetch token no longer works.") % {"job": claims.get("job")},
            status=403,
        )
    # A fine-tune or quantize job reads one version; an evaluate job may read two (held-out text and a task).
    allowed = [job.params.get("dataset_version_id"), *(job.params.get("dataset_version_ids") or [])]
    if str(version_id) not in {str(pk) for pk in allowed if pk is not None}:
        raise FetchRefused(
            _("Job %(job)s does not train on dataset version %(version)s.") % {"job": job.pk, "version": version_id},
            status=403,
        )
    if not DatasetVersion.objects.filter(pk=version_id).exists():
        raise FetchRefused(_("Dataset version %(version)s does not exist.") % {"version": version_id}, status=404)
    return job


def requested_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a `Range: bytes=N-` or `bytes=N-M` header, None without one; 416 for anything else."""
    if not header:
        return None
    found = RANGE.match(header.strip())
    if found is None:
        raise FetchRefused(_("Only one range of the form bytes=N- or bytes=N-M is served."), status=416, size=size)
    start = int(found.group(1))
    end = min(int(found.group(2)), size - 1) if found.group(2) else size - 1
    if start >= size or end < start:
        raise FetchRefused(
            _("The range starts at byte %(start)s; the file has %(size)s bytes.") % {"start": start, "size": size},
            status=416,
            size=size,
        )
    return start, end


def _stored_file(version: DatasetVersion) -> Path:
    """The version's file in the store, if it is ready and whole."""
    if version.status != DatasetVersion.Status.READY:
        raise FetchRefused(
            _("Dataset version %(version)s is %(status)s, not ready.")
            % {"version": version.pk, "status": version.get_status_display()},
            status=404,
        )
    path = storage.absolute(version.path)
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    if size != version.size:
        logger.error("dataset version %s: %s is missing or has %s bytes, not %s", version.pk, path, size, version.size)
        raise FetchRefused(
            _("The file of dataset version %(version)s is missing from the store; ask an admin.")
            % {"version": version.pk},
            status=404,
        )
    return path


@transaction.atomic
def fetch_begin(*, token: str, version_id: int, range_header: str = "") -> Fetch:
    """Authorize one fetch of a dataset version's file by a job's agent and record it (offset where it starts)."""
    job = check_fetch_token(token, version_id)
    version = DatasetVersion.objects.select_related("dataset").get(pk=version_id)
    path = _stored_file(version)
    found = requested_range(range_header, version.size)
    start, end = found or (0, version.size - 1)
    host = job.queue.removeprefix("host.") if job.queue.startswith("host.") else ""
    audit.record(
        action="dataset.fetched",
        actor=None,
        actor_name=f"agent:{host}" if host else f"job:{job.pk}",
        target=version,
        detail={"job": job.pk, "offset": start},
    )
    return Fetch(job=job, version=version, path=path, start=start, end=end, partial=found is not None)


def _chunks(path: Path, start: int, length: int) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        handle.seek(start)
        while length > 0:
            piece = handle.read(min(READ_BYTES, length))
            if not piece:
                return
            length -= len(piece)
            yield piece


async def _async_chunks(path: Path, start: int, length: int) -> AsyncIterator[bytes]:
    # Under ASGI a synchronous iterator would be read whole into memory first (Django's fallback); the reads go to
    # a thread so the event loop keeps serving while the disk answers.
    handle = await asyncio.to_thread(open, path, "rb")
    try:
        await asyncio.to_thread(handle.seek, start)
        while length > 0:
            piece = await asyncio.to_thread(handle.read, min(READ_BYTES, length))
            if not piece:
                return
            length -= len(piece)
            yield piece
    finally:
        handle.close()


def _refusal(error: FetchRefused) -> JsonResponse:
    response = JsonResponse({"detail": error.message}, status=error.status)
    if error.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="internal"'
    if error.status == 416 and error.size is not None:
        response["Content-Range"] = f"bytes */{error.size}"
    return response


def _file_response(request, fetch: Fetch) -> HttpResponse | StreamingHttpResponse:
    status = 206 if fetch.partial else 200
    if request.method == "HEAD":
        response = HttpResponse(status=status, content_type="application/octet-stream")
    else:
        chunks = _async_chunks if isinstance(request, ASGIRequest) else _chunks
        stream = chunks(fetch.path, fetch.start, fetch.length)
        response = StreamingHttpResponse(stream, status=status, content_type="application/octet-stream")
    sha256 = fetch.version.sha256
    response["Content-Length"] = str(fetch.length)
    response["ETag"] = f'"{sha256}"'
    response["X-Content-SHA256"] = sha256
    response["Accept-Ranges"] = "bytes"
    response["Cache-Control"] = "no-store"
    if fetch.partial:
        response["Content-Range"] = f"bytes {fetch.start}-{fetch.end}/{fetch.version.size}"
    return response


@csrf_exempt
def version_file(request, pk: int):
    """GET/HEAD /internal/datasets/versions/<pk>/file with `Authorization: Bearer <job's fetch token>`."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse({"detail": _("Only GET and HEAD are served here.")}, status=405)
        response["Allow"] = "GET, HEAD"
        return response
    scheme, _space, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return _refusal(FetchRefused(_("Send the job's fetch token: Authorization: Bearer <token>."), status=401))
    try:
        fetch = fetch_begin(token=token.strip(), version_id=pk, range_header=request.headers.get("Range", ""))
    except FetchRefused as error:
        return _refusal(error)
    return _file_response(request, fetch)

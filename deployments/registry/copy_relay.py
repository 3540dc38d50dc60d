"""Copying a model between hosts through the console: the route datasets use, in both directions.

GPU hosts reach the console (CONSOLE_INTERNAL_URL) and nothing else; the console reaches no agent. So a copy is a
relay: the source host's copy job (role "send") PUTs each file of the ready artifact to the console, which keeps it
under MODEL_COPY_RELAY until the destination host's copy job (role "receive") has fetched it with GET (Range to
resume) and verified its sha256. Both jobs carry a job-scoped token signed with SECRETS_ENCRYPTION_KEYS, as a
dataset fetch does; only the copy's own files (the source artifact's files_sha256 keys) can be named, and only while
the source artifact is ready and the job is pending or running. A refusal is JSON {"detail": ...}: 401 (no or bad
token), 403 (not this job's copy), 404 (no such file), 409 (not relayed yet: the receiver waits), 416, 422 (sha256).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from pathlib import Path

from django.conf import settings
from django.core import signing
from django.http import HttpResponse, JsonResponse
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt

import audit
from deployments.datasets.fetch import Fetch, FetchRefused, _file_response, _refusal, requested_range
from deployments.jobs.models import Job
from deployments.registry.models import ModelArtifact

logger = logging.getLogger(__name__)

SALT = "llmdeploy.registry.copy.v1"  # its own salt: a dataset fetch token does not open a model copy
SEND, RECEIVE = "send", "receive"
READ_BYTES = 1 << 20


def _keys() -> list[str]:
    return [str(key) for key in settings.SECRETS_ENCRYPTION_KEYS]


def copy_token(job: Job) -> str:
    """The token with which a copy job's agent sends or receives its copy's files (role from the job's params)."""
    return signing.dumps(
        {"job": job.pk, "copy": int(job.target_id), "role": job.params.get("role")}, key=_keys()[0], salt=SALT
    )


def relay_root() -> Path:
    return Path(settings.MODEL_COPY_RELAY)


def relay_dir(copy_id: int) -> Path:
    return relay_root() / f"artifact-{copy_id}"


def check_copy_token(token: str, copy_id: int, role: str) -> tuple[Job, ModelArtifact, ModelArtifact]:
    """(job, destination artifact, ready source artifact) when `token` may `role` copy `copy_id` now."""
    newest, *older = _keys()
    try:
        claims = signing.loads(token, key=newest, fallback_keys=older, salt=SALT)
    except signing.BadSignature:
        raise FetchRefused(_("The copy token is not valid."), status=401) from None
    if not isinstance(claims, dict) or claims.get("copy") != copy_id or claims.get("role") != role:
        raise FetchRefused(_("This copy token is for another copy or the other end of it."), status=403)
    job = Job.objects.filter(pk=claims.get("job"), kind=Job.Kind.COPY).first()
    if job is None or not job.is_active:
        raise FetchRefused(
            _("Job %(job)s is not pending or running: its copy token no longer works.") % {"job": claims.get("job")},
            status=403,
        )
    if job.target_id != str(copy_id) or job.params.get("role") != role:
        raise FetchRefused(_("Job %(job)s does not %(role)s this copy.") % {"job": job.pk, "role": role}, status=403)
    copy = ModelArtifact.objects.filter(pk=copy_id).select_related("host").first()
    source = ModelArtifact.objects.filter(pk=job.params.get("source_artifact_id")).select_related("host").first()
    if copy is None or source is None:
        raise FetchRefused(_("The model copy %(copy)s does not exist.") % {"copy": copy_id}, status=404)
    if source.status != ModelArtifact.Status.READY:
        raise FetchRefused(
            _("The model on %(host)s is %(status)s, not ready: only a ready model is copied.")
            % {"host": source.host.name, "status": source.get_status_display()},
            status=404,
        )
    return job, copy, source


def _relay_file(copy_id: int, source: ModelArtifact, relpath: str) -> tuple[Path, str]:
    """The relayed file's path and the sha256 it must have; only a file of the source artifact, inside the relay."""
    expected = (source.files_sha256 or {}).get(relpath)
    if not expected:
        raise FetchRefused(_("%(path)s is not a file of this model.") % {"path": relpath}, status=404)
    root = relay_dir(copy_id).resolve()
    path = (root / relpath).resolve()
    if root not in path.parents:
        raise FetchRefused(_("%(path)s is not a file of this model.") % {"path": relpath}, status=404)
    return path, expected


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(READ_BYTES), b""):
            digest.update(piece)
    return digest.hexdigest()


def received(path: Path) -> int:
    """Bytes of the file the console holds so far (the whole file once verified)."""
    for candidate in (path, _part(path)):
        if candidate.exists():
            return candidate.stat().st_size
    return 0


def receive_piece(*, path: Path, expected: str, start: int, total: int, stream, length: int) -> int:
    """Append `length` bytes from `stream` at `start` to the file's .part; at `total` bytes, verify and keep it."""
    if path.exists():
        return path.stat().st_size  # already whole: a resent piece changes nothing
    part = _part(path)
    have = part.stat().st_size if part.exists() else 0
    if start != have:
        raise FetchRefused(
            _("The console holds %(have)s bytes of this file; send from there.") % {"have": have}, status=416, size=have
        )
    if start + length > total:
        raise FetchRefused(_("The piece runs past the file's end."), status=416, size=have)
    part.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "ab") as handle:
        left = length
        while left > 0:
            piece = stream.read(min(READ_BYTES, left))
            if not piece:
                break
            handle.write(piece)
            left -= len(piece)
    have = part.stat().st_size
    if have == total:
        if _sha256(part) != expected:
            part.unlink()
            raise FetchRefused(
                _("The file's sha256 does not match the model's record; the console deleted it: send it again."),
                status=422,
            )
        os.replace(part, path)
    return have


def _token(request) -> str:
    scheme, _space, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise FetchRefused(_("Send the copy job's token: Authorization: Bearer <token>."), status=401)
    return token.strip()


def _content_range(header: str) -> tuple[int, int]:
    """(start, total) of a `Content-Range: bytes N-M/T` header."""
    try:
        unit, _space, spec = header.partition(" ")
        span, total = spec.split("/")
        start = int(span.split("-")[0])
        if unit != "bytes":
            raise ValueError
        return start, int(total)
    except ValueError:
        raise FetchRefused(_("Send Content-Range: bytes N-M/T with each piece."), status=400) from None


def _send(request, copy_id: int, relpath: str) -> HttpResponse:
    job, copy, source = check_copy_token(_token(request), copy_id, SEND)
    path, expected = _relay_file(copy_id, source, relpath)
    if request.method == "HEAD":
        response = HttpResponse(status=200)
        response["X-Received-Bytes"] = str(received(path))
        return response
    start, total = _content_range(request.headers.get("Content-Range", ""))
    length = int(request.headers.get("Content-Length") or 0)
    have = receive_piece(path=path, expected=expected, start=start, total=total, stream=request, length=length)
    if start == 0 or have == total:
        audit.record(
            action="model.copy_relayed" if have == total else "model.copy_sending",
            actor=None,
            actor_name=f"agent:{source.host.name}",
            target=copy,
            detail={"job": job.pk, "file": relpath, "bytes": have},
        )
    return JsonResponse({"received": have})


def _receive(request, copy_id: int, relpath: str) -> HttpResponse:
    job, copy, source = check_copy_token(_token(request), copy_id, RECEIVE)
    path, expected = _relay_file(copy_id, source, relpath)
    if not path.exists():
        raise FetchRefused(
            _("%(path)s has not reached the console yet (%(bytes)s bytes so far); wait for the sending host.")
            % {"path": relpath, "bytes": received(path)},
            status=409,
        )
    size = path.stat().st_size
    found = requested_range(request.headers.get("Range", ""), size)
    start, end = found or (0, size - 1)
    if request.method == "GET":
        audit.record(
            action="model.copy_fetched",
            actor=None,
            actor_name=f"agent:{copy.host.name}",
            target=copy,
            detail={"job": job.pk, "file": relpath, "offset": start},
        )
    served = _Served(sha256=expected, size=size)
    fetch = Fetch(job=job, version=served, path=path, start=start, end=end, partial=found is not None)
    return _file_response(request, fetch)


class _Served:
    """What `_file_response` reads of a dataset version: the digest and size of the file served."""

    def __init__(self, *, sha256: str, size: int) -> None:
        self.sha256, self.size = sha256, size


def release(copy_id: int) -> None:
    """Forget the relayed files of a copy (its receiver has them, or the copy ended)."""
    shutil.rmtree(relay_dir(copy_id), ignore_errors=True)


@csrf_exempt
def copy_file(request, pk: int, relpath: str):
    """/internal/models/copies/<pk>/files/<relpath>: HEAD and PUT by the sending job, GET and HEAD (with
    `X-Copy-Role: receive`) by the receiving one; DELETE by the receiver once it holds every file."""
    try:
        role = RECEIVE if request.method == "GET" or request.headers.get("X-Copy-Role") == RECEIVE else SEND
        if request.method in ("PUT",) or (request.method == "HEAD" and role == SEND):
            return _send(request, pk, relpath)
        if request.method in ("GET", "HEAD"):
            return _receive(request, pk, relpath)
        response = JsonResponse({"detail": _("Only GET, HEAD and PUT are served here.")}, status=405)
        response["Allow"] = "GET, HEAD, PUT"
        return response
    except FetchRefused as error:
        return _refusal(error)


@csrf_exempt
def copy_done(request, pk: int):
    """POST /internal/models/copies/<pk>/done by the receiving job: the console drops its relayed files."""
    if request.method != "POST":
        response = JsonResponse({"detail": _("Only POST is served here.")}, status=405)
        response["Allow"] = "POST"
        return response
    try:
        check_copy_token(_token(request), pk, RECEIVE)
    except FetchRefused as error:
        return _refusal(error)
    release(pk)
    return JsonResponse({"released": True})

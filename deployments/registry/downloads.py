"""Download engine for model weights: pin a Hub revision, choose files, fetch them resumably and verified, publish.

Pure Python, no Django: the job runner calls these functions, reports :class:`Progress` and turns a
:class:`DownloadError` (``cause``, ``message``, ``next_step``, ``field``) into the job's state.

A staging directory while a download runs::

    staging/<path>.part       the bytes received so far; its size is the resume point (also after kill -9)
    staging/<path>            a file whose size and hash were verified
    staging/.verified.json    sidecar: size, mtime, inode and hashes of each verified file, so a restarted job
                              skips it without re-reading it; also the files the last download() was given
    staging/.download.lock    flock held by the process writing here: a redelivered job cannot write concurrently

:func:`publish` writes ``manifest.json``, removes the sidecar, the lock and any leftovers, and renames the staging
directory to its final name in one ``rename``: a model directory is complete or absent, never half-written.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import hashlib
import http.client
import importlib.metadata
import json
import logging
import os
import random
import re
import shutil
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

import requests
import urllib3
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.errors import (
    DisabledRepoError,
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

from deployments.units import GB

__all__ = [
    "Cancelled",
    "DownloadError",
    "Progress",
    "RemoteFile",
    "RepoSnapshot",
    "check_space",
    "choose_files",
    "discard",
    "download",
    "hash_directory",
    "progress_dict",
    "publish",
    "required_space",
    "resolve",
    "validate_layout",
]

logger = logging.getLogger(__name__)

PART_SUFFIX = ".part"
SIDECAR = ".verified.json"
LOCK_FILE = ".download.lock"
MANIFEST = "manifest.json"
_MANIFEST_TMP = MANIFEST + ".tmp"
_RESERVED = {SIDECAR, LOCK_FILE, _MANIFEST_TMP, SIDECAR + ".tmp"}
LIBRARY_NAME = "llmdeploy-console"
try:
    LIBRARY_VERSION = importlib.metadata.version(LIBRARY_NAME)
except importlib.metadata.PackageNotFoundError:
    LIBRARY_VERSION = "dev"

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 20.0
"""A silent connection is given up (then resumed) after this long; it also bounds a cancel on a stalled socket."""
CANCEL_CHECK_S = 0.1
"""``should_cancel`` may hit a database: call it at most this often (reads are sized to last <= READ_TARGET_S)."""
READ_TARGET_S = 0.25
MIN_READ = 64 * 1024
RATE_WINDOW_S = 5.0
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
RETRY_AFTER_MAX_S = 60.0
RESOLVE_ATTEMPTS = 3
PARALLEL_FILES = 4
HASH_CHUNK = 8 * 2**20

# Weight formats. When a repo has safetensors, the others are the same weights again in another format.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".msgpack", ".h5", ".ot")
DUPLICATE_WEIGHT_SUFFIXES = (".bin", ".pth", ".pt", ".gguf", ".msgpack", ".h5", ".ot")
# Small files a serving engine may read: configs, tokenizers, chat templates, and the license text that travels with
# the weights. Python files are left out: they only run with trust_remote_code, which is off by default.
DEFAULT_PATTERNS = ("*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja", "tokenizer*", "*.md", "LICENSE*", "NOTICE*")
# .bin files in model repos that hold no weights.
NON_WEIGHT_BINS = {"training_args.bin", "optimizer.bin", "scheduler.bin", "scaler.bin"}
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.(?P<ext>safetensors|bin)$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")

# Network failures worth retrying: the bytes on disk are kept and the next request resumes after them.
_TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.HTTPError,
    http.client.HTTPException,
    ConnectionError,
    TimeoutError,
)


# --------------------------------------------------------------------------------------------------------------
# Data types


@dataclass(frozen=True)
class RemoteFile:
    """One file of a pinned revision, with what the Hub says about it (what the download is verified against)."""

    path: str
    size: int
    sha256: str | None  # LFS files: the content's sha256
    blob_id: str | None  # the git blob id: sha1 of "blob <size>\0" + content (of the pointer for LFS files)
    lfs: bool


@dataclass
class RepoSnapshot:
    """A repo at one commit: ``revision`` is what the user asked for, ``commit`` the sha it pointed at."""

    repo_id: str
    revision: str
    commit: str
    files: list[RemoteFile]
    gated: bool | str
    private: bool
    license: str | None


@dataclass
class Progress:
    """What a download (or a hash of local files) has done so far: the current file and the whole job.

    ``rate_bps`` is over the last ~5 s of network bytes (0 while only hashing); ``eta_s`` is None until it is
    known. ``phase`` is "downloading", "verifying" (hashing bytes already on disk) or "hashing" (local import).
    """

    file: str
    file_done: int
    file_total: int
    done: int
    total: int
    rate_bps: float
    eta_s: float | None
    phase: str = "downloading"
    files_done: int = 0
    files_total: int = 0


class DownloadError(Exception):
    """A download failed for a reason the user can act on.

    ``cause`` is a short machine code ("gated", "unauthorized", "revision_not_found", "repo_not_found",
    "no_space", "checksum_mismatch", "network", "cancelled", "invalid_layout", "exists", ...), ``message`` says
    what happened, ``next_step`` what to do about it, ``field`` which input it is about (for forms), if any.
    """

    def __init__(self, message: str, *, cause: str, next_step: str, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.cause = cause
        self.next_step = next_step
        self.field = field

    def as_dict(self) -> dict[str, str | None]:
        """The error as the job runner stores it."""
        return {"cause": self.cause, "message": self.message, "next_step": self.next_step, "field": self.field}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(cause={self.cause!r}, message={self.message!r})"


class Cancelled(DownloadError):
    """``should_cancel()`` said stop. Partial files stay: a new download resumes them, :func:`discard` drops them."""

    def __init__(
        self,
        message: str = "The download was cancelled.",
        *,
        cause: str = "cancelled",
        next_step: str = "Start it again to resume from the bytes already on disk, or discard the partial files.",
        field: str | None = None,
    ):
        super().__init__(message, cause=cause, next_step=next_step, field=field)


class _Transient(Exception):
    """A failure worth retrying; ``retry_after`` is the server's hint in seconds, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Mismatch(Exception):
    """The bytes received are not the file the commit names."""


# --------------------------------------------------------------------------------------------------------------
# Resolve


def resolve(repo_id: str, revision: str | None, *, endpoint: str | None, token: str | None) -> RepoSnapshot:
    """Pin ``revision`` (default "main") of a model repo to its commit sha and list its files with sizes and hashes.

    Only the given ``token`` is sent: never a token stored on this machine, so what works here works in the job.
    For a gated repo, one file is probed with HEAD so a missing license acceptance shows now, not after a
    space check and hours of waiting.
    """
    revision = revision or "main"
    api = HfApi(endpoint=endpoint, library_name=LIBRARY_NAME, library_version=LIBRARY_VERSION)
    for attempt in range(1, RESOLVE_ATTEMPTS + 1):
        try:
            info = api.model_info(repo_id, revision=revision, files_metadata=True, token=token or False)
            break
        except HFValidationError as exc:
            raise DownloadError(
                f"{repo_id!r} is not a valid model id: {exc}",
                cause="invalid_repo_id",
                next_step="Use the id from the model page's address: owner/name, e.g. Qwen/Qwen2.5-7B-Instruct.",
                field="repo_id",
            ) from exc
        except HfHubHTTPError as exc:
            if _is_transient_status(exc.response) and attempt < RESOLVE_ATTEMPTS:
                time.sleep(BACKOFF_BASE_S * attempt)
                continue
            raise _hub_error(exc, repo_id=repo_id, revision=revision, token=token, endpoint=endpoint) from exc
        except OfflineModeIsEnabled as exc:
            raise _offline_error() from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            if attempt < RESOLVE_ATTEMPTS:
                time.sleep(BACKOFF_BASE_S * attempt)
                continue
            raise _network_error(f"Could not reach the Hub at {_endpoint(endpoint)}: {exc}", endpoint) from exc

    commit = info.sha or ""
    if not _COMMIT_RE.match(commit) or info.siblings is None:
        raise DownloadError(
            f"The Hub did not return a commit and a file list for {repo_id}@{revision}.",
            cause="hub_metadata",
            next_step="Retry; if it persists, check that the endpoint is a Hugging Face Hub or a compatible mirror.",
        )
    files = [_remote_file(sibling, repo_id) for sibling in info.siblings]
    snapshot = RepoSnapshot(
        repo_id=repo_id,
        revision=revision,
        commit=commit,
        files=files,
        gated=info.gated or False,
        private=bool(info.private),
        license=_license(info),
    )
    if snapshot.gated and files:
        _probe_access(snapshot, endpoint=endpoint, token=token)
    return snapshot


def _remote_file(sibling: Any, repo_id: str) -> RemoteFile:
    path = sibling.rfilename
    _check_repo_path(path, repo_id)
    lfs = sibling.lfs
    size = sibling.size if sibling.size is not None else (lfs.size if lfs is not None else None)
    if size is None:
        raise DownloadError(
            f"The Hub did not report the size of {path} in {repo_id}.",
            cause="hub_metadata",
            next_step="Retry; a mirror must answer /api/models/<id>/revision/<rev>?blobs=true with sizes.",
        )
    return RemoteFile(
        path=path,
        size=int(size),
        sha256=lfs.sha256 if lfs is not None else None,
        blob_id=sibling.blob_id,
        lfs=lfs is not None,
    )


def _license(info: Any) -> str | None:
    card = getattr(info, "card_data", None)
    value = getattr(card, "license", None) if card is not None else None
    if value:
        return ", ".join(value) if isinstance(value, list) else str(value)
    for tag in info.tags or []:
        if isinstance(tag, str) and tag.startswith("license:"):
            return tag.split(":", 1)[1]
    return None


def _probe_access(snapshot: RepoSnapshot, *, endpoint: str | None, token: str | None) -> None:
    """HEAD one small file of a gated repo: the Hub shows gated repos' metadata to anyone, but not their files."""
    names = {f.path: f for f in snapshot.files}
    probe = names.get("config.json") or min(snapshot.files, key=lambda f: f.size)
    url = hf_hub_url(snapshot.repo_id, probe.path, revision=snapshot.commit, endpoint=endpoint)
    headers = _headers(token)
    try:
        # No redirect: on the Hub an LFS file redirects to the CDN, and the answer before it is enough.
        response = get_session().head(
            url, headers=headers, allow_redirects=False, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        )
        hf_raise_for_status(response)
    except HfHubHTTPError as exc:
        if _is_transient_status(exc.response):
            return  # the download itself retries; do not fail the resolve on a hiccup
        raise _hub_error(
            exc, repo_id=snapshot.repo_id, revision=snapshot.revision, token=token, endpoint=endpoint, path=probe.path
        ) from exc
    except (requests.ConnectionError, requests.Timeout):
        return


# --------------------------------------------------------------------------------------------------------------
# Choosing files and space


def _suffix(path: str) -> str:
    name = path.rsplit("/", 1)[-1].lower()
    return "." + name.rsplit(".", 1)[1] if "." in name else ""


def _is_weight(path: str) -> bool:
    return _suffix(path) in WEIGHT_SUFFIXES and path.rsplit("/", 1)[-1] not in NON_WEIGHT_BINS


def _is_duplicate_format(path: str) -> bool:
    """Weights in a non-safetensors format, or the index of such shards (pytorch_model.bin.index.json)."""
    lower = path.lower()
    if lower.endswith(".index.json"):
        lower = lower[: -len(".index.json")]
    return lower.endswith(DUPLICATE_WEIGHT_SUFFIXES)


def _matches(path: str, patterns: Iterable[str] | None) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns or ())


def choose_files(
    files: list[RemoteFile],
    *,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    prefer_safetensors: bool = True,
) -> list[RemoteFile]:
    """The files a serving engine needs: configs, tokenizer, chat template, license text, and one copy of the weights.

    * Python files are skipped (they only run with trust_remote_code); ``include=["*.py"]`` brings them back.
    * With ``prefer_safetensors`` and any ``*.safetensors`` in the repo, the same weights in other formats
      (.bin, .pth, .pt, .gguf, .msgpack, .h5, .ot, and their ``*.index.json``) are skipped.
    * ``include``: fnmatch globs on the repo path (``*`` crosses ``/``) of files to take in addition to the
      defaults, even ones skipped above. ``exclude``: globs of files never to take; it wins over everything.

    Small files come first (a broken config shows in seconds), then the weights, each group by path.
    """
    has_safetensors = prefer_safetensors and any(f.path.lower().endswith(".safetensors") for f in files)
    chosen: list[RemoteFile] = []
    seen: set[str] = set()
    for remote in files:
        if remote.path in seen:
            continue
        name = remote.path.rsplit("/", 1)[-1]
        if _matches(remote.path, exclude):
            continue
        if _matches(remote.path, include):
            wanted = True
        elif remote.path.lower().endswith(".py") or (has_safetensors and _is_duplicate_format(remote.path)):
            wanted = False
        else:
            wanted = _is_weight(remote.path) or _matches(name, DEFAULT_PATTERNS)
        if wanted:
            seen.add(remote.path)
            chosen.append(remote)
    return sorted(chosen, key=lambda f: (_is_weight(f.path), f.path))


def _part_path(final: Path) -> Path:
    return final.with_name(final.name + PART_SUFFIX)


def required_space(files: list[RemoteFile], staging: Path) -> int:
    """Bytes still to write for ``files``: a complete file (right size) needs none, a ``.part`` only its rest."""
    staging = Path(staging)
    needed = 0
    for remote in files:
        final = staging / remote.path
        with contextlib.suppress(OSError):
            if final.is_file() and final.stat().st_size == remote.size:
                continue
        try:
            have = _part_path(final).stat().st_size
        except OSError:
            have = 0
        needed += max(remote.size - have, 0) if have <= remote.size else remote.size
    return needed


def _disk_free(path: Path) -> int:
    """Free bytes for an unprivileged writer on the filesystem that holds ``path`` (or would, once created)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _gb(n: float) -> str:
    return f"{n / GB:,.1f} GB" if abs(n) >= GB / 10 or n == 0 else f"{n / GB:.3f} GB"


def check_space(
    files: list[RemoteFile],
    staging: Path,
    *,
    free_bytes: Callable[[Path], int] = _disk_free,
    margin: int = GB,
) -> None:
    """Raise ``DownloadError(cause="no_space")`` unless the bytes still to fetch plus ``margin`` fit on the disk."""
    staging = Path(staging)
    needed = required_space(files, staging)
    free = free_bytes(staging)
    if needed + margin <= free:
        return
    short = needed + margin - free
    raise DownloadError(
        f"Not enough disk space in {staging}: {_gb(needed)} still to download plus a {_gb(margin)} margin, "
        f"but only {_gb(free)} free.",
        cause="no_space",
        next_step=f"Free at least {_gb(short)} there (or point the data directory at a larger disk), or download "
        "fewer files (exclude patterns), then retry; bytes already downloaded are kept.",
    )


# --------------------------------------------------------------------------------------------------------------
# Paths, locks, sidecar


def _check_repo_path(path: str, repo_id: str = "") -> None:
    """A repo path must stay inside the staging directory and not collide with the engine's own files."""
    segments = path.split("/")
    unsafe = (
        not path
        or path.startswith("/")
        or "\\" in path
        or "\0" in path
        or any(segment in ("", ".", "..") for segment in segments)
    )
    reserved = path in _RESERVED or path.endswith(PART_SUFFIX)
    if unsafe or reserved:
        where = f" in {repo_id}" if repo_id else ""
        raise DownloadError(
            f"Refusing the file name {path!r}{where}: it would {'leave' if unsafe else 'clash with the files of'} "
            "the download directory.",
            cause="unsafe_path",
            next_step="Exclude that file, or check that the endpoint is a trusted Hub mirror.",
        )


@contextlib.contextmanager
def _locked(staging: Path) -> Iterator[int]:
    """Hold an exclusive flock on the staging directory; the kernel drops it when the process dies (kill -9)."""
    fd = os.open(staging / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise DownloadError(
                f"Another process is writing into {staging}.",
                cause="busy",
                next_step="Wait for that download to finish, or cancel it first.",
            ) from exc
        yield fd
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (its entry lives in the directory, not the file)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json_atomic(path: Path, document: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    """(size, mtime_ns, inode) of a regular file, None if it is not one."""
    try:
        st = path.lstat()
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


class _Sidecar:
    """``.verified.json``: which files in staging were verified, so a restart skips them without re-reading."""

    def __init__(self, staging: Path):
        self.path = staging / SIDECAR
        self.doc: dict[str, Any] = {"version": 1, "files": {}, "selected": None}
        self.lock = threading.RLock()  # files are verified by several threads at once
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("files"), dict):
                self.doc.update(doc)

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.doc["files"]

    @property
    def selected(self) -> list[str] | None:
        return self.doc.get("selected")

    def known(self, path: str, final: Path) -> dict[str, Any] | None:
        """The record of ``path`` if the file on disk is still the one that was verified (same size, mtime, inode)."""
        record = self.files.get(path)
        key = _stat_key(final)
        if not isinstance(record, dict) or key is None:
            return None
        if [record.get("size"), record.get("mtime_ns"), record.get("ino")] != list(key):
            return None
        return record

    def matches(self, remote: RemoteFile, final: Path) -> str | None:
        """The sha256 of ``final`` if it was verified as ``remote`` and has not changed since; else None."""
        record = self.known(remote.path, final)
        if record is None or record["size"] != remote.size:
            return None
        if remote.sha256 and record.get("sha256") != remote.sha256:
            return None
        if not remote.lfs and remote.blob_id and record.get("git_sha1") != remote.blob_id:
            return None
        return record.get("sha256")

    def record(self, path: str, final: Path, sha256: str, git_sha1: str | None) -> None:
        key = _stat_key(final)
        if key is None:
            return
        with self.lock:
            self.files[path] = {
                "size": key[0],
                "mtime_ns": key[1],
                "ino": key[2],
                "sha256": sha256,
                "git_sha1": git_sha1,
            }
            self.save()

    def save(self) -> None:
        with self.lock:
            _write_json_atomic(self.path, self.doc)


# --------------------------------------------------------------------------------------------------------------
# Progress and hashing


class _Meter:
    """Counts bytes and calls ``on_progress`` at most every ``interval`` seconds (and when told to)."""

    def __init__(
        self,
        on_progress: Callable[[Progress], None] | None,
        should_cancel: Callable[[], bool] | None,
        *,
        total: int,
        files_total: int,
        interval: float,
        cancelled_message: Callable[[], str] | None = None,
    ):
        self.on_progress = on_progress
        self.should_cancel = should_cancel
        self.interval = interval
        self.total = total
        self.files_total = files_total
        self.files_done = 0
        self.done = 0
        self.fetched = 0  # network bytes only: the rate is about the link, not the disk
        # Files download in parallel: each thread has its own current file; the totals are shared.
        self._local = threading.local()
        self._lock = threading.RLock()
        self.aborted = threading.Event()  # one file failed, or a cancel was seen: the other files stop too
        self.cancel_seen = False
        self.current: tuple[str, int, int, str] = ("", 0, 0, "downloading")
        self.finished: list[tuple[str, int, str]] = []
        # The callbacks (they may touch a database) run only on the thread that called download().
        self.caller = threading.get_ident()
        self.cancelled_message = cancelled_message
        now = time.monotonic()
        self.samples: deque[tuple[float, int]] = deque([(now, 0)])
        self.last_emit = -float("inf")
        self.last_cancel_check = -float("inf")

    # The calling thread's current file.
    file = property(lambda self: getattr(self._local, "file", ""))
    file_done = property(lambda self: getattr(self._local, "file_done", 0))
    file_total = property(lambda self: getattr(self._local, "file_total", 0))
    phase = property(lambda self: getattr(self._local, "phase", "downloading"))

    def _share(self) -> None:
        """The most recently active file is what progress reports show."""
        self.current = (self.file, self.file_done, self.file_total, self.phase)

    def start_file(self, path: str, size: int, phase: str) -> None:
        local = self._local
        local.file, local.file_total, local.file_done, local.phase = path, size, 0, phase
        self._share()

    def add(self, n: int, *, fetched: bool) -> None:
        self._local.file_done = self.file_done + n
        self._share()
        with self._lock:
            self.done += n
            if fetched:
                self.fetched += n
                now = time.monotonic()
                if now - self.samples[-1][0] >= 0.1:
                    self.samples.append((now, self.fetched))

    def set_file_done(self, n: int) -> None:
        self._local.file_done = n
        self._share()

    def rewind_file(self) -> None:
        """The bytes of the current file are thrown away (the server restarted it, or they failed to verify)."""
        with self._lock:
            self.done -= self.file_done
        self._local.file_done = 0

    def finish_file(self) -> None:
        with self._lock:
            self.files_done += 1
            self.finished.append((self.file, self.file_total, self.phase))
        self.drain()

    def drain(self) -> None:
        """On the calling thread: one report at the end of each file finished since the last call."""
        if not self.on_caller():
            return
        with self._lock:
            finished, self.finished = self.finished, []
        for path, size, phase in finished:
            self.current = (path, size, size, phase)
            self.emit()

    def rate(self, now: float) -> float:
        while len(self.samples) > 1 and self.samples[1][0] <= now - RATE_WINDOW_S:
            self.samples.popleft()
        start, fetched = self.samples[0]
        elapsed = now - start
        return (self.fetched - fetched) / elapsed if elapsed > 0 else 0.0

    def on_caller(self) -> bool:
        return threading.get_ident() == self.caller

    def emit(self) -> None:
        if not self.on_caller():
            return  # the calling thread reports for everyone (see _Download.run)
        with self._lock:
            self._emit()

    def _emit(self) -> None:
        now = time.monotonic()
        self.last_emit = now
        if self.on_progress is None:
            return
        rate = self.rate(now)
        remaining = max(self.total - self.done, 0)
        eta = remaining / rate if rate > 0 else (0.0 if remaining == 0 else None)
        file, file_done, file_total, phase = self.current
        self.on_progress(
            Progress(
                file=file,
                file_done=file_done,
                file_total=file_total,
                done=self.done,
                total=self.total,
                rate_bps=rate,
                eta_s=eta,
                phase=phase,
                files_done=self.files_done,
                files_total=self.files_total,
            )
        )

    def check_cancel(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if self.aborted.is_set():
            message = self.cancelled_message() if self.cancel_seen and self.cancelled_message else "Cancelled."
            raise Cancelled(message if self.cancel_seen else "Stopped: another file of this download failed.")
        if not self.on_caller():
            return
        if self.should_cancel is not None and (force or now - self.last_cancel_check >= CANCEL_CHECK_S):
            self.last_cancel_check = now
            if self.should_cancel():
                self.cancel_seen = True
                self.aborted.set()
                message = self.cancelled_message() if self.cancelled_message else "Cancelled."
                raise Cancelled(message)

    def tick(self) -> None:
        """Between chunks: honour a cancel, report progress when due."""
        self.check_cancel()
        self.drain()
        if time.monotonic() - self.last_emit >= self.interval:
            self.emit()

    def sleep(self, seconds: float) -> None:
        """Sleep, checking for a cancel at least every CANCEL_CHECK_S."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, CANCEL_CHECK_S))
            self.check_cancel(force=True)


class _Hashes:
    """sha256 of the content, and for a regular (non-LFS) git file the git blob sha1 the Hub lists as its id."""

    def __init__(self, remote: RemoteFile):
        self.remote = remote
        self.reset()

    def reset(self) -> None:
        self.sha256 = hashlib.sha256()
        self.git = None
        if not self.remote.lfs and self.remote.blob_id:
            self.git = hashlib.sha1(b"blob %d\0" % self.remote.size, usedforsecurity=False)

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)

    def problems(self, size: int) -> list[str]:
        """What does not match the metadata ([] when the file verifies)."""
        remote = self.remote
        found = []
        if size != remote.size:
            found.append(f"expected {remote.size} bytes, got {size}")
        if remote.sha256 and self.sha256.hexdigest() != remote.sha256:
            found.append(f"expected sha256 {remote.sha256}, got {self.sha256.hexdigest()}")
        if self.git is not None and self.git.hexdigest() != remote.blob_id:
            found.append(f"expected git blob sha1 {remote.blob_id}, got {self.git.hexdigest()}")
        return found


def _hash_into(
    path: Path,
    update: Callable[[memoryview], None],
    meter: _Meter | None,
    *,
    limit: int | None = None,
) -> int:
    """Feed ``path`` (its first ``limit`` bytes) to ``update`` in large chunks, honouring cancels; bytes read."""
    buffer = bytearray(HASH_CHUNK)
    view = memoryview(buffer)
    read = 0
    with open(path, "rb", buffering=0) as handle:
        while limit is None or read < limit:
            want = HASH_CHUNK if limit is None else min(HASH_CHUNK, limit - read)
            n = handle.readinto(view[:want])
            if not n:
                break
            update(view[:n])
            read += n
            if meter is not None:
                meter.add(n, fetched=False)
                meter.tick()
    return read


# --------------------------------------------------------------------------------------------------------------
# Download


def _endpoint(endpoint: str | None) -> str:
    return (endpoint or constants.ENDPOINT).rstrip("/")


def _headers(token: str | None) -> dict[str, str]:
    # token=False: send only the token the console gives, never one stored on this machine.
    return build_hf_headers(token=token or False, library_name=LIBRARY_NAME, library_version=LIBRARY_VERSION)


def _is_transient_status(response: requests.Response | None) -> bool:
    return response is not None and (response.status_code == 429 or response.status_code >= 500)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After", "")
    return min(float(value), RETRY_AFTER_MAX_S) if value.isdigit() else None


def _network_error(detail: str, endpoint: str | None) -> DownloadError:
    return DownloadError(
        detail,
        cause="network",
        next_step=f"Check that this server can reach {_endpoint(endpoint)} (proxy, firewall, DNS), then retry; "
        "bytes already downloaded are kept and the download resumes where it stopped.",
    )


def _offline_error() -> DownloadError:
    return DownloadError(
        "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set) on this server.",
        cause="offline",
        next_step="Unset HF_HUB_OFFLINE for the worker, or import the model from a local directory.",
    )


def _hub_error(
    exc: HfHubHTTPError,
    *,
    repo_id: str,
    revision: str,
    token: str | None,
    endpoint: str | None,
    path: str | None = None,
) -> DownloadError:
    """Turn what ``hf_raise_for_status`` raised into a message and a next step a user can follow."""
    status = exc.response.status_code if exc.response is not None else None
    page = f"{_endpoint(endpoint)}/{repo_id}"
    if isinstance(exc, GatedRepoError):
        if token:
            return DownloadError(
                f"{repo_id} is a gated model and the stored token's account has not been granted access to it.",
                cause="gated",
                next_step=f"Open {page} signed in as the token's owner and accept the license (some authors approve "
                "requests by hand), or store a token of an account that has access; then retry.",
                field="token",
            )
        return DownloadError(
            f"{repo_id} is a gated model: downloading it needs a token of an account that accepted its license.",
            cause="gated",
            next_step=f"Accept the license on the Hub at {page}, create a read token at "
            "https://huggingface.co/settings/tokens, store the token in the console and retry.",
            field="token",
        )
    if isinstance(exc, RevisionNotFoundError):
        return DownloadError(
            f"{repo_id} has no revision {revision!r}.",
            cause="revision_not_found",
            next_step=f"Use a branch, tag or full commit sha that exists (see {page}/tree/main), or leave the "
            "revision empty for main.",
            field="revision",
        )
    if isinstance(exc, EntryNotFoundError):
        return DownloadError(
            f"{path or 'A file'} is listed in {repo_id}@{revision} but the Hub cannot serve it.",
            cause="file_not_found",
            next_step="Retry later, or exclude that file, or choose another revision.",
        )
    if isinstance(exc, DisabledRepoError):
        return DownloadError(
            f"{repo_id} has been disabled on the Hub.",
            cause="repo_disabled",
            next_step="Choose another model.",
            field="repo_id",
        )
    if isinstance(exc, RepositoryNotFoundError):
        if token:
            hint = "If it is private, check that the token's account (or organisation) can read it."
        else:
            hint = "If it is private, store a token of an account that can read it."
        return DownloadError(
            f"No model {repo_id!r} on the Hub{' that the stored token can see' if token else ''}.",
            cause="repo_not_found",
            next_step=f"Check the id (owner/name, as in the model page's address). {hint}",
            field="repo_id",
        )
    if status == 401:
        return DownloadError(
            "The Hub rejected the stored token (invalid, expired or revoked).",
            cause="unauthorized",
            next_step="Create a read token at https://huggingface.co/settings/tokens, store it in the console and "
            "retry.",
            field="token",
        )
    if status == 403:
        return DownloadError(
            f"The stored token is not allowed to read {repo_id}.",
            cause="unauthorized",
            next_step="Give the token read access to this repository (fine-grained tokens list the repos they may "
            "read, and need 'access public gated repos' for gated ones), or store a read token.",
            field="token",
        )
    if status == 429:
        return DownloadError(
            "The Hub is rate-limiting this server.",
            cause="rate_limited",
            next_step="Wait a few minutes and retry; requests with a token get higher limits.",
        )
    if status is not None and status >= 500:
        return _network_error(f"The Hub answered HTTP {status} for {repo_id}.", endpoint)
    return DownloadError(
        f"The Hub refused the request for {repo_id} (HTTP {status}): {getattr(exc, 'server_message', None) or exc}",
        cause="hub_error",
        next_step="Check the model id, revision and token, then retry.",
    )


class _FileState:
    """One file being written: its open ``.part``, running hashes and how many bytes it holds."""

    def __init__(self, remote: RemoteFile, handle: BinaryIO, offset: int):
        self.remote = remote
        self.handle = handle
        self.hashes = _Hashes(remote)
        self.offset = offset

    def restart(self, meter: _Meter) -> None:
        """Drop what the file holds and start it over from byte 0."""
        self.handle.seek(0)
        self.handle.truncate(0)
        self.hashes.reset()
        self.offset = 0
        meter.rewind_file()


class _Download:
    def __init__(
        self,
        snapshot: RepoSnapshot,
        files: list[RemoteFile],
        staging: Path,
        *,
        endpoint: str | None,
        token: str | None,
        meter: _Meter,
        chunk_size: int,
        retries: int,
    ):
        self.snapshot = snapshot
        self.files = files
        self.staging = staging
        self.endpoint = endpoint
        self.token = token
        self.meter = meter
        self.chunk_size = max(int(chunk_size), MIN_READ)
        self.retries = max(int(retries), 0)
        self.headers = {**_headers(token), "Accept-Encoding": "identity"}  # ranges and sizes are of the raw bytes
        self.session = get_session()
        self.sidecar = _Sidecar(staging)

    def run(self) -> dict[str, str]:
        self.sidecar.doc.update(
            repo_id=self.snapshot.repo_id,
            commit=self.snapshot.commit,
            selected=sorted(f.path for f in self.files),
        )
        self.sidecar.save()
        self.meter.emit()
        result: dict[str, str] = {}

        def one(remote: RemoteFile) -> None:
            self.meter.check_cancel()  # throttled: thousands of small files must not mean thousands of queries
            result[remote.path] = self._one(remote)
            self.meter.finish_file()

        # A few files at once: the link stays busy while another file is hashed, fsynced and renamed (and
        # per-connection limits of CDNs add up), as huggingface_hub's own snapshot_download does. This thread
        # polls the cancel flag and reports progress for all of them.
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=max(1, min(PARALLEL_FILES, len(self.files)))) as pool:
            futures = [pool.submit(one, remote) for remote in self.files]
            pending = set(futures)
            while pending:
                _done, pending = wait(pending, timeout=CANCEL_CHECK_S)
                with contextlib.suppress(Cancelled):
                    self.meter.tick()  # a cancel sets `aborted`: the file threads stop at their next chunk
            for future in futures:
                exc = future.exception()
                if exc is not None and (
                    failure is None or (isinstance(failure, Cancelled) and not isinstance(exc, Cancelled))
                ):
                    failure = exc  # a real failure wins over the others' "stopped"
        self.meter.emit()
        if failure is not None:
            raise failure
        return {remote.path: result[remote.path] for remote in self.files}

    # -- one file ------------------------------------------------------------------------------------------------

    def _one(self, remote: RemoteFile) -> str:
        final = self.staging / remote.path
        part = _part_path(final)
        known = self.sidecar.matches(remote, final)
        if known:
            self.meter.start_file(remote.path, remote.size, "verifying")
            self.meter.add(remote.size, fetched=False)
            return known
        if final.exists() or final.is_symlink():
            digest = self._verify_existing(remote, final)
            if digest:
                return digest
        final.parent.mkdir(parents=True, exist_ok=True)

        for fresh in (False, True):
            resumed = part.exists() and part.stat().st_size > 0
            try:
                hashes = self._transfer(remote, part)
            except _Mismatch as mismatch:
                part.unlink(missing_ok=True)
                self.meter.rewind_file()
                if resumed and not fresh:
                    # The bytes kept from an earlier run may be what is wrong (a crash of the host can leave
                    # garbage at the end of a file): fetch the whole file once more before calling it corrupt.
                    logger.warning(
                        "%s: resumed file failed verification (%s); downloading it again", remote.path, mismatch
                    )
                    continue
                raise DownloadError(
                    f"{remote.path} from {self.snapshot.repo_id}@{self.snapshot.commit[:12]} failed verification: "
                    f"{mismatch}.",
                    cause="checksum_mismatch",
                    next_step="The damaged file was deleted. Retry; if it fails again the Hub or the mirror serves "
                    "a corrupted file: report it, or choose another revision.",
                ) from None
            break
        os.replace(part, final)
        _fsync_dir(final.parent)
        digest = hashes.sha256.hexdigest()
        self.sidecar.record(remote.path, final, digest, hashes.git.hexdigest() if hashes.git else None)
        return digest

    def _verify_existing(self, remote: RemoteFile, final: Path) -> str | None:
        """A complete file without a record (e.g. the sidecar was lost): keep it if it verifies, else delete it."""
        if _stat_key(final) is None or final.stat().st_size != remote.size:
            _remove(final)
            return None
        self.meter.start_file(remote.path, remote.size, "verifying")
        hashes = _Hashes(remote)
        size = _hash_into(final, hashes.update, self.meter)
        if hashes.problems(size):
            self.meter.rewind_file()
            final.unlink()
            return None
        digest = hashes.sha256.hexdigest()
        self.sidecar.record(remote.path, final, digest, hashes.git.hexdigest() if hashes.git else None)
        return digest

    def _transfer(self, remote: RemoteFile, part: Path) -> _Hashes:
        """Bring ``part`` to the full file, resuming from its bytes; fsync it; raise _Mismatch if it does not verify."""
        # "ab": creates the file if needed, never truncates what an earlier run wrote, always writes at its end.
        # Unbuffered: chunks are large, and a failed write (disk full) must not be retried by a buffer flush.
        with open(part, "ab", buffering=0) as handle:
            state = _FileState(remote, handle, handle.tell())
            if state.offset > remote.size:  # longer than the file can be: not ours to trust
                state.handle.truncate(0)
                state.offset = 0
            if state.offset:
                self.meter.start_file(remote.path, remote.size, "verifying")
                _hash_into(part, state.hashes.update, self.meter, limit=state.offset)
            self.meter.start_file(remote.path, remote.size, "downloading")
            self.meter.set_file_done(state.offset)

            failures = 0
            while state.offset < remote.size:
                before = state.offset
                try:
                    self._stream(state)
                    if state.offset < remote.size:
                        raise _Transient(f"the connection ended after {state.offset} of {remote.size} bytes")
                except _Transient as exc:
                    failures = 1 if state.offset > before else failures + 1  # progress resets the count
                    if failures > self.retries:
                        raise _network_error(
                            f"Downloading {remote.path} failed after {self.retries} retries: {exc}", self.endpoint
                        ) from exc
                    delay = exc.retry_after
                    if delay is None:
                        delay = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** (failures - 1)) * random.uniform(0.5, 1.0)
                    logger.warning(
                        "%s: %s; retry %d/%d in %.1f s from byte %d",
                        remote.path,
                        exc,
                        failures,
                        self.retries,
                        delay,
                        state.offset,
                    )
                    self.meter.sleep(delay)
            _flush(state.handle, part)
            problems = state.hashes.problems(state.offset)
        if problems:
            raise _Mismatch("; ".join(problems))
        return state.hashes

    def _stream(self, state: _FileState) -> None:
        """One GET from ``state.offset`` to the end (or until the connection fails), appending to the .part."""
        remote = state.remote
        url = hf_hub_url(self.snapshot.repo_id, remote.path, revision=self.snapshot.commit, endpoint=self.endpoint)
        headers = dict(self.headers)
        if state.offset:
            headers["Range"] = f"bytes={state.offset}-"
        try:
            response = self.session.get(
                url, headers=headers, stream=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S), allow_redirects=True
            )
        except OfflineModeIsEnabled as exc:
            raise _offline_error() from exc
        except _TRANSIENT_ERRORS as exc:
            raise _Transient(f"request failed: {exc}") from exc
        with response:
            self._check_response(state, response)
            # No content decoding was asked for (identity): read the raw bytes, one buffer per read, no copies.
            encoding = response.headers.get("Content-Encoding", "identity").lower()
            decode = encoding not in ("", "identity")
            raw = response.raw
            read_size = MIN_READ
            started = time.monotonic()
            received = 0
            while True:
                try:
                    chunk = raw.read(read_size, decode_content=decode)
                except _TRANSIENT_ERRORS as exc:
                    raise _Transient(f"connection lost: {exc}") from exc
                if not chunk:
                    return
                n = len(chunk)
                if state.offset + n > remote.size:
                    raise _Mismatch(f"the server sent more than the {remote.size} bytes the commit lists")
                _write(state.handle, chunk, remote.path, self.staging)
                state.hashes.update(chunk)
                state.offset += n
                received += n
                self.meter.add(n, fetched=True)
                # Size reads to last about READ_TARGET_S at the measured rate: large (up to chunk_size) on a fast
                # link, small on a slow one, so a cancel is seen within a fraction of a second either way. At most
                # doubling per read: the first reads come from socket buffers and overstate the rate.
                elapsed = time.monotonic() - started
                if elapsed > 0:
                    target = int(received / elapsed * READ_TARGET_S) // MIN_READ * MIN_READ
                    read_size = min(max(target, MIN_READ), 2 * read_size, self.chunk_size)
                self.meter.tick()

    def _check_response(self, state: _FileState, response: requests.Response) -> None:
        """Raise for errors; adopt a 200 answer to a range request by starting the file over."""
        remote = state.remote
        status = response.status_code
        if _is_transient_status(response):
            raise _Transient(f"the Hub answered HTTP {status}", _retry_after(response))
        if status == 416:
            # The server's file is shorter than what we hold: the bytes on disk are not a prefix of it.
            state.restart(self.meter)
            raise _Transient("the server refused the resume point (HTTP 416); starting the file over")
        if status >= 400:
            try:
                hf_raise_for_status(response)
            except HfHubHTTPError as exc:
                raise _hub_error(
                    exc,
                    repo_id=self.snapshot.repo_id,
                    revision=self.snapshot.revision,
                    token=self.token,
                    endpoint=self.endpoint,
                    path=remote.path,
                ) from exc
        if status == 206:
            match = re.match(r"bytes (\d+)-(\d+)/(\d+|\*)", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != state.offset:
                state.restart(self.meter)
                raise _Transient("the server answered another range than asked; starting the file over")
            if match.group(3) != "*" and int(match.group(3)) != remote.size:
                raise _Mismatch(f"expected {remote.size} bytes, the server has {match.group(3)}")
        elif status == 200:
            if state.offset:
                logger.info("%s: the server ignored the range request; starting the file over", remote.path)
                state.restart(self.meter)
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) != remote.size:
                raise _Mismatch(f"expected {remote.size} bytes, the server sends {length}")
        else:
            raise DownloadError(
                f"Unexpected answer HTTP {status} for {remote.path} from {_endpoint(self.endpoint)}.",
                cause="hub_error",
                next_step="Retry; if it persists, check the endpoint (a proxy may be rewriting answers).",
            )


def _write(handle: BinaryIO, data: bytes, path: str, staging: Path) -> None:
    """Write all of ``data`` to an unbuffered file (a raw write may take only part of it)."""
    view = memoryview(data)
    try:
        while view:
            written = handle.write(view)
            view = view[written:]
    except OSError as exc:
        raise _disk_error(exc, path, staging) from exc


def _flush(handle: BinaryIO, part: Path) -> None:
    try:
        handle.flush()
        os.fsync(handle.fileno())
    except OSError as exc:
        raise _disk_error(exc, part.name, part.parent) from exc


def _disk_error(exc: OSError, path: str, staging: Path) -> DownloadError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DownloadError(
            f"The disk filled up while writing {path} in {staging}.",
            cause="no_space",
            next_step="Free space on that disk and retry; the bytes already written are kept and resumed.",
        )
    return DownloadError(
        f"Could not write {path} in {staging}: {exc.strerror or exc}.",
        cause="io_error",
        next_step="Check the disk and the permissions of the data directory, then retry.",
    )


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def download(
    snapshot: RepoSnapshot,
    files: list[RemoteFile],
    staging: Path,
    *,
    endpoint: str | None,
    token: str | None,
    on_progress: Callable[[Progress], None],
    should_cancel: Callable[[], bool],
    chunk_size: int = 8 * 2**20,
    progress_interval: float = 0.5,
    retries: int = 5,
) -> dict[str, str]:
    """Download ``files`` of ``snapshot`` (at its pinned commit) into ``staging``; returns ``{path: sha256}``.

    Each file streams to ``<path>.part``, hashed as it is written, resumes from the bytes already there (after
    hashing them) with a ``Range`` request, is fsynced, checked against the commit's size and sha256 (LFS) or
    git blob id (other files), then renamed to ``<path>``. Verified files are recorded in a sidecar and skipped
    on the next call without re-reading them. Network failures are retried with backoff, resuming each time;
    ``retries`` counts consecutive attempts that brought no new bytes. A resumed file that fails verification is
    fetched once more from scratch before the error is raised (the kept bytes may be what was damaged).

    ``should_cancel`` is polled about every 0.1 s (reads are sized to take ~0.25 s at the measured rate):
    :class:`Cancelled` is raised with the ``.part`` files kept. ``on_progress`` is called at the start, at most
    every ``progress_interval`` seconds, and at the end of each file. ``done`` only goes back when a server
    ignores a resume request or a resumed file has to be fetched again.
    """
    staging = Path(staging)
    unique: dict[str, RemoteFile] = {}
    for remote in files:
        _check_repo_path(remote.path, snapshot.repo_id)
        unique.setdefault(remote.path, remote)
    files = list(unique.values())
    try:
        staging.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, staging.name, staging.parent) from exc

    meter = _Meter(
        on_progress,
        should_cancel,
        total=sum(f.size for f in files),
        files_total=len(files),
        interval=progress_interval,
    )

    def cancelled_message() -> str:
        return (
            f"The download of {snapshot.repo_id} was cancelled with {_gb(meter.done)} of {_gb(meter.total)} on disk "
            f"in {staging}."
        )

    meter.cancelled_message = cancelled_message
    with _locked(staging):
        job = _Download(
            snapshot, files, staging, endpoint=endpoint, token=token, meter=meter, chunk_size=chunk_size,
            retries=retries,
        )  # fmt: skip
        return job.run()


# --------------------------------------------------------------------------------------------------------------
# Publish and discard


_libc: Any = None


def _rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails with EEXIST instead of replacing an empty ``dst`` (Linux renameat2 RENAME_NOREPLACE).

    A plain rename silently replaces an empty directory: checking first would leave a race between two publishers.
    Falls back to check-then-rename where renameat2 is missing or the filesystem does not support the flag.
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    renameat2 = getattr(_libc, "renameat2", None) if _libc else None
    if renameat2 is not None:
        at_fdcwd, rename_noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code), str(src), None, str(dst))
    if dst.exists() or dst.is_symlink():
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def _walk_files(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every entry that is not a real directory (links to directories included)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]:
            path = Path(dirpath, name)
            yield path.relative_to(root).as_posix(), path


def _remove_empty_dirs(root: Path) -> None:
    for dirpath, _dirnames, _filenames in sorted(os.walk(root), key=lambda item: -len(item[0])):
        if Path(dirpath) != root:
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)  # only succeeds when empty


def publish(staging: Path, final: Path, manifest: dict) -> None:
    """Write ``manifest.json`` into ``staging`` and rename ``staging`` to ``final`` in one atomic step.

    The manifest is ``manifest`` plus ``files`` (path, size, sha256 of every file, sorted) and ``total_size``.
    ``final`` must not exist (``cause="exists"``); its parent must, on the same filesystem. ``.part`` files, the
    sidecar and the lock are removed first; every file the last :func:`download` was given must be complete
    (``cause="incomplete"``, and then nothing is touched). Complete files from earlier calls stay: a runner may
    fetch a repo in several calls. Hashes come from the sidecar when a file is unchanged since it was verified,
    so publishing 100 GB does not re-read it.
    """
    staging, final = Path(staging), Path(final)
    if final.exists() or final.is_symlink():
        raise DownloadError(
            f"{final} already exists.",
            cause="exists",
            next_step="Choose another name, or delete the existing model first.",
        )
    if not final.parent.is_dir():
        raise DownloadError(
            f"The models directory {final.parent} does not exist.",
            cause="invalid_destination",
            next_step="Create it (on the same filesystem as the staging directory) and retry.",
        )
    if not staging.is_dir():
        raise DownloadError(
            f"Nothing to publish: {staging} is not a directory.",
            cause="incomplete",
            next_step="Download the model again.",
        )
    with _locked(staging):
        sidecar = _Sidecar(staging)
        selected = set(sidecar.selected or ())
        if MANIFEST in selected:
            raise DownloadError(
                f"The model has its own {MANIFEST}, which would be overwritten by the console's manifest.",
                cause="invalid_layout",
                next_step=f"Exclude {MANIFEST} from the download (it is not needed to serve the model).",
            )
        # Look before touching anything: an incomplete download must stay resumable as it is.
        leftovers: list[Path] = []
        kept: list[tuple[str, Path]] = []
        for rel, path in sorted(_walk_files(staging)):
            if rel in _RESERVED or rel == MANIFEST:
                continue
            if rel.endswith(PART_SUFFIX):
                leftovers.append(path)  # unfinished files of an earlier selection (the last one has none)
            elif _stat_key(path) is None:
                raise DownloadError(
                    f"{rel} in {staging} is not a regular file (a link or a special file).",
                    cause="invalid_layout",
                    next_step="Replace it with a copy of the file it points to.",
                )
            else:
                kept.append((rel, path))
        missing = sorted(selected - {rel for rel, _ in kept})
        if missing:
            raise DownloadError(
                f"{len(missing)} file(s) of the download are not complete in {staging}: {', '.join(missing[:5])}"
                + (" ..." if len(missing) > 5 else ""),
                cause="incomplete",
                next_step="Run the download again (it resumes), then publish.",
            )
        entries: list[dict[str, Any]] = []
        for rel, path in kept:
            record = sidecar.known(rel, path)
            if record and record.get("sha256"):
                size, sha256 = int(record["size"]), str(record["sha256"])
            else:  # not written by download(): hash it now
                digest = hashlib.sha256()
                size = _hash_into(path, digest.update, None)
                sha256 = digest.hexdigest()
            entries.append({"path": rel, "size": size, "sha256": sha256})
        for path in leftovers:
            path.unlink()
        document = {**manifest, "files": entries, "total_size": sum(entry["size"] for entry in entries)}
        _write_json_atomic(staging / MANIFEST, document)
        for name in (SIDECAR, SIDECAR + ".tmp", _MANIFEST_TMP, LOCK_FILE):
            (staging / name).unlink(missing_ok=True)  # the lock stays held through the open descriptor
        _remove_empty_dirs(staging)
        _fsync_dir(staging)
        try:
            _rename_noreplace(staging, final)
        except OSError as exc:
            (staging / LOCK_FILE).touch()  # staging stays usable: put the lock file back
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise DownloadError(
                    f"{final} already exists.",
                    cause="exists",
                    next_step="Choose another name, or delete the existing model first.",
                ) from exc
            if exc.errno == errno.EXDEV:
                raise DownloadError(
                    f"{staging} and {final} are on different filesystems, so the model cannot be moved in one step.",
                    cause="cross_device",
                    next_step="Put the staging directory on the same filesystem as the models directory.",
                ) from exc
            raise
    _fsync_dir(final.parent)


def discard(staging: Path) -> None:
    """Delete a staging directory and everything in it (cancel with "delete partial files"). No-op if absent."""
    staging = Path(staging)
    if staging.is_symlink():
        staging.unlink()
        return
    if not staging.is_dir():
        return
    with _locked(staging):  # refuse while a download is still writing into it
        shutil.rmtree(staging)


# --------------------------------------------------------------------------------------------------------------
# Local directories


SKIPPED_DIRS = {".git", ".cache"}
"""Not model files: a git clone's objects (LFS copies of the weights) and huggingface_hub's download metadata."""


def hash_directory(
    directory: Path,
    *,
    should_cancel: Callable[[], bool] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> dict[str, tuple[int, str]]:
    """``{relative path: (size, sha256)}`` of every regular file under ``directory``, for a local import.

    Links are followed only when they resolve inside ``directory`` (hashed under the link's name); a link that
    leads out of it, a broken link or a linked directory raises ``DownloadError(cause="unsafe_path")`` rather
    than reading files the user did not mean to import. ``.git`` and ``.cache`` directories are skipped.
    """
    try:
        root = Path(directory).resolve(strict=True)
    except OSError as exc:
        raise DownloadError(
            f"{directory} cannot be read: {exc.strerror or exc}.",
            cause="not_found",
            next_step="Check the path and that the worker can read it.",
        ) from exc
    if not root.is_dir():
        raise DownloadError(f"{directory} is not a directory.", cause="not_found", next_step="Give a directory.")

    found: list[tuple[str, Path, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in list(dirnames):
            if name in SKIPPED_DIRS:
                dirnames.remove(name)
            elif (base / name).is_symlink():
                raise _link_error(base / name, root, "links to directories are not followed")
        for name in filenames:
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(root):
                    raise _link_error(path, root, f"it points outside the directory, to {target}")
                if not target.is_file():
                    raise _link_error(path, root, "it is broken")
                found.append((rel, target, target.stat().st_size))
            elif path.is_file():
                found.append((rel, path, path.stat().st_size))
    found.sort()

    meter = _Meter(
        on_progress, should_cancel, total=sum(size for _, _, size in found), files_total=len(found), interval=0.5
    )
    meter.emit()
    result: dict[str, tuple[int, str]] = {}
    for rel, path, size in found:
        meter.start_file(rel, size, "hashing")
        digest = hashlib.sha256()
        read = _hash_into(path, digest.update, meter)
        result[rel] = (read, digest.hexdigest())
        meter.finish_file()
    return result


def _link_error(path: Path, root: Path, why: str) -> DownloadError:
    return DownloadError(
        f"{path.relative_to(root)} in {root} is a link that is not imported: {why}.",
        cause="unsafe_path",
        next_step="Copy the real files into the directory (e.g. cp -rL), or remove the link, then retry.",
    )


def validate_layout(files: Iterable[str]) -> list[str]:
    """What a model directory lacks to be served ([] when fine): config.json, a tokenizer, weights, all shards."""
    names = {name.removeprefix("./") for name in files}
    top = {name for name in names if "/" not in name}
    problems: list[str] = []
    unsafe = sorted(name for name in names if name.startswith("/") or ".." in name.split("/"))
    if unsafe:
        problems.append(f"File names leave the model directory: {', '.join(unsafe[:5])}.")

    if "config.json" not in top:
        problems.append("config.json is missing: serving engines read the model's architecture from it.")

    vocab = any(
        name.startswith(("vocab.", "spiece.", "sentencepiece")) or name.endswith((".tiktoken", ".model"))
        for name in top
    )
    if not ({"tokenizer.json", "tokenizer.model"} & top or ("tokenizer_config.json" in top and vocab)):
        if "tokenizer_config.json" in top:
            problems.append(
                "The tokenizer is incomplete: tokenizer_config.json is there but no vocabulary "
                "(tokenizer.json, tokenizer.model, vocab.json, vocab.txt or *.tiktoken)."
            )
        else:
            problems.append(
                "No tokenizer: expected tokenizer.json, tokenizer.model, or tokenizer_config.json with a vocabulary "
                "file (vocab.json, vocab.txt, *.tiktoken)."
            )

    weights = sorted(name for name in top if name.lower().endswith((".safetensors", ".bin")) and _is_weight(name))
    if not weights:
        problems.append("No weights: expected *.safetensors (or pytorch_model*.bin) files next to config.json.")

    shards: dict[tuple[str, int, str], set[int]] = {}
    for name in weights:
        match = _SHARD_RE.match(name)
        if match:
            key = (match["prefix"], int(match["count"]), match["ext"])
            shards.setdefault(key, set()).add(int(match["index"]))
    for (prefix, count, ext), present in sorted(shards.items()):
        missing = [i for i in range(1, count + 1) if i not in present]
        if missing:
            listed = ", ".join(f"{prefix}-{i:05d}-of-{count:05d}.{ext}" for i in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            problems.append(f"{len(missing)} of {count} weight shards are missing: {listed}{more}.")
    for name in sorted(top):
        if name.endswith(".safetensors.index.json") and not any(w.endswith(".safetensors") for w in weights):
            problems.append(f"{name} lists safetensors shards but none are present.")
    return problems


def progress_dict(progress: Progress) -> dict[str, Any]:
    """A Progress as plain data (for job state or a websocket message)."""
    return asdict(progress)

"""The staging directory a download writes into, and the durable writes it is built from.

::

    staging/<path>.part       the bytes received so far; its size is the resume point (also after kill -9)
    staging/<path>            a file whose size and hash were verified
    staging/.verified.json    sidecar: size, mtime, inode and hashes of each verified file, so a restarted job
                              skips it without re-reading it; also the files the last download() was given
    staging/.download.lock    flock held by the process writing here: a redelivered job cannot write concurrently
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from deployments.registry.downloads.errors import DownloadError, _disk_error

if TYPE_CHECKING:  # snapshot imports this module: the type is only named here
    from deployments.registry.downloads.snapshot import RemoteFile

PART_SUFFIX = ".part"
SIDECAR = ".verified.json"
LOCK_FILE = ".download.lock"
MANIFEST = "manifest.json"
_MANIFEST_TMP = MANIFEST + ".tmp"
_RESERVED = {SIDECAR, LOCK_FILE, _MANIFEST_TMP, SIDECAR + ".tmp"}


def _part_path(final: Path) -> Path:
    return final.with_name(final.name + PART_SUFFIX)


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


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)

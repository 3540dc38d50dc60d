"""Re-hashing a model directory against its manifest, for the health check's integrity sweep. Standard library only
(no Django): the sweep handler feeds it the expected hashes and keeps the progress.

Large chunks (8 MiB) keep the per-call overhead negligible and let hashlib release the GIL while it hashes, so the
sweep runs at the speed of a bare sha256 of the same files when it is not throttled."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 8 * 2**20
OK, MISMATCH, MISSING, UNREADABLE = "ok", "mismatch", "missing", "unreadable"


class Stopped(Exception):
    """The sweep was asked to stop between two chunks; the files finished so far are kept as done."""


class Throttle:
    """Keeps reading at or below `mb_s` megabytes (10**6 bytes) a second; 0 or less means unthrottled."""

    def __init__(self, mb_s: float) -> None:
        self.rate = mb_s * 1e6 if mb_s and mb_s > 0 else 0.0
        self.started = time.monotonic()
        self.bytes = 0

    def took(self, size: int) -> None:
        if not self.rate:
            return
        self.bytes += size
        ahead = self.bytes / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            time.sleep(ahead)


def sha256_of(
    path: str | Path,
    *,
    throttle: Throttle | None = None,
    should_stop: Callable[[], bool] | None = None,
    chunk: int = CHUNK,
) -> str:
    """The file's sha256, read in `chunk`-sized pieces (raises Stopped when should_stop says so between two)."""
    digest = hashlib.sha256()
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as handle:
        while size := handle.readinto(buffer):
            digest.update(view[:size])
            if throttle is not None:
                throttle.took(size)
            if should_stop is not None and should_stop():
                raise Stopped(str(path))
    return digest.hexdigest()


@dataclass(frozen=True)
class FileCheck:
    path: str  # relative to the artifact's directory
    status: str  # ok | mismatch | missing | unreadable
    size: int = 0
    detail: str = ""

    def as_dict(self) -> dict:
        return {"status": self.status, "size": self.size, "detail": self.detail}


def check_file(root: str | Path, relative: str, expected: str, **hashing) -> FileCheck:
    """One listed file against its expected sha256."""
    path = Path(root) / relative
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return FileCheck(relative, MISSING, detail=f"{relative} is missing")
    except OSError as error:
        return FileCheck(relative, UNREADABLE, detail=f"{relative}: {error.strerror or error}")
    try:
        found = sha256_of(path, **hashing)
    except OSError as error:
        return FileCheck(relative, UNREADABLE, size, f"{relative}: {error.strerror or error}")
    if found != expected:
        return FileCheck(relative, MISMATCH, size, f"{relative}: sha256 {found[:12]}… expected {expected[:12]}…")
    return FileCheck(relative, OK, size)


def check_directory(
    root: str | Path,
    expected: dict[str, str],
    *,
    done: Iterable[str] = (),
    mb_s: float = 0,
    should_stop: Callable[[], bool] | None = None,
    on_file: Callable[[FileCheck], None] | None = None,
) -> list[FileCheck]:
    """Check every file of `expected` ({relative path: sha256}) not in `done`, in path order, one Throttle for all;
    `on_file` is called after each (the caller records it, so a restart skips it). Raises Stopped mid-way."""
    skip = set(done)
    throttle = Throttle(mb_s)
    results = []
    for relative in sorted(expected):
        if relative in skip:
            continue
        if should_stop is not None and should_stop():
            raise Stopped(relative)
        result = check_file(root, relative, expected[relative], throttle=throttle, should_stop=should_stop)
        results.append(result)
        if on_file is not None:
            on_file(result)
    return results


def disk_usage(path: str | Path) -> dict:
    """Total, used and free bytes of the filesystem holding `path` (its nearest existing parent)."""
    target = Path(path)
    while not target.exists() and target != target.parent:
        target = target.parent
    usage = shutil.disk_usage(target)
    return {"path": str(path), "total": usage.total, "used": usage.used, "free": usage.free}


def replace_file(source: str | Path, target: str | Path) -> None:
    """Put a verified file in place in one rename (a server that has the old one open keeps reading it)."""
    parent = Path(target).parent
    for directory in reversed([p for p in (parent, *parent.parents) if not p.exists()]):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)  # noqa: S103 - whatever the umask: a server's non-root user walks them
    os.chmod(source, 0o644)  # servers may run as another user
    os.replace(source, target)

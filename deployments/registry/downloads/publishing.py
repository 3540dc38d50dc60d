"""Publish a verified staging directory as a model directory in one rename, or discard it."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deployments.registry import layout
from deployments.registry.downloads.errors import DownloadError
from deployments.registry.downloads.staging import (
    _MANIFEST_TMP,
    _RESERVED,
    LOCK_FILE,
    MANIFEST,
    PART_SUFFIX,
    SIDECAR,
    _fsync_dir,
    _locked,
    _Sidecar,
    _stat_key,
    _write_json_atomic,
)
from deployments.registry.downloads.verify import _hash_into

_libc: Any = None


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
    _check_destination(staging, final)
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
        kept, leftovers = _inventory(staging)
        _check_complete(staging, selected, kept)
        entries = _manifest_entries(kept, sidecar)
        for path in leftovers:
            path.unlink()
        document = {**manifest, "files": entries, "total_size": sum(entry["size"] for entry in entries)}
        _write_json_atomic(staging / MANIFEST, document)
        for name in (SIDECAR, SIDECAR + ".tmp", _MANIFEST_TMP, LOCK_FILE):
            (staging / name).unlink(missing_ok=True)  # the lock stays held through the open descriptor
        _remove_empty_dirs(staging)
        layout.readable_by_servers(staging)  # the console runs under umask 077; servers read as another user
        _fsync_dir(staging)
        _rename_into_place(staging, final)
    _fsync_dir(final.parent)


def _exists_error(final: Path) -> DownloadError:
    return DownloadError(
        f"{final} already exists.",
        cause="exists",
        next_step="Choose another name, or delete the existing model first.",
    )


def _check_destination(staging: Path, final: Path) -> None:
    """``final`` is free, its parent exists and ``staging`` is a directory (checked again by the rename itself)."""
    if final.exists() or final.is_symlink():
        raise _exists_error(final)
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


def _inventory(staging: Path) -> tuple[list[tuple[str, Path]], list[Path]]:
    """The model's files ``(relative path, path)`` and the ``.part`` leftovers; a link or special file raises."""
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
    return kept, leftovers


def _check_complete(staging: Path, selected: set[str], kept: list[tuple[str, Path]]) -> None:
    missing = sorted(selected - {rel for rel, _ in kept})
    if missing:
        raise DownloadError(
            f"{len(missing)} file(s) of the download are not complete in {staging}: {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else ""),
            cause="incomplete",
            next_step="Run the download again (it resumes), then publish.",
        )


def _manifest_entries(kept: list[tuple[str, Path]], sidecar: _Sidecar) -> list[dict[str, Any]]:
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
    return entries


def _rename_into_place(staging: Path, final: Path) -> None:
    try:
        _rename_noreplace(staging, final)
    except OSError as exc:
        (staging / LOCK_FILE).touch()  # staging stays usable: put the lock file back
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise _exists_error(final) from exc
        if exc.errno == errno.EXDEV:
            raise DownloadError(
                f"{staging} and {final} are on different filesystems, so the model cannot be moved in one step.",
                cause="cross_device",
                next_step="Put the staging directory on the same filesystem as the models directory.",
            ) from exc
        raise


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

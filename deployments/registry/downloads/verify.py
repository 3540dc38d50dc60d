"""Verify: hash files as the Hub names them (sha256, git blob sha1), hash a local directory, check a model's layout."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from deployments.registry.downloads.errors import DownloadError
from deployments.registry.downloads.progress import Progress, _Meter
from deployments.registry.downloads.selection import _is_weight
from deployments.registry.downloads.snapshot import RemoteFile
from deployments.registry.downloads.staging import _RESERVED, MANIFEST

HASH_CHUNK = 8 * 2**20
SKIPPED_DIRS = {".git", ".cache"}
# Keys only the console's own manifest.json has (the import job's and publish's): a model's own file of that
# name lacks them and is hashed like any other.
CONSOLE_MANIFEST_KEYS = ({"files", "imported_at"}, {"files", "downloaded_at"})
"""Not model files: a git clone's objects (LFS copies of the weights) and huggingface_hub's download metadata."""
_SHARD_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.(?P<ext>safetensors|bin)$")


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
# Local directories


def hash_directory(
    directory: Path,
    *,
    should_cancel: Callable[[], bool] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> dict[str, tuple[int, str]]:
    """``{relative path: (size, sha256)}`` of every regular file under ``directory``, for a local import.

    Links are followed only when they resolve inside ``directory`` (hashed under the link's name); a link that
    leads out of it, a broken link or a linked directory raises ``DownloadError(cause="unsafe_path")`` rather
    than reading files the user did not mean to import. ``.git`` and ``.cache`` directories are skipped, and so
    are the console's own files at the top (the manifest an earlier import wrote, the download engine's lock and
    sidecar): importing a directory again must not count them as model files.
    """
    found = _local_files(_local_root(directory))
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


def _local_root(directory: Path) -> Path:
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
    return root


def _local_files(root: Path) -> list[tuple[str, Path, int]]:
    """(relative path, path to read, size) of each file to hash, sorted; links are checked (see hash_directory)."""
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
            if base == root and is_console_file(path):
                continue
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
    return found


def is_console_file(path: Path) -> bool:
    """Whether a file at the top of a model directory is one the console wrote (not part of the model)."""
    if path.name in _RESERVED:
        return True
    if path.name != MANIFEST or path.is_symlink() or not path.is_file():
        return False
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(document, dict) and any(keys <= document.keys() for keys in CONSOLE_MANIFEST_KEYS)


def _link_error(path: Path, root: Path, why: str) -> DownloadError:
    return DownloadError(
        f"{path.relative_to(root)} in {root} is a link that is not imported: {why}.",
        cause="unsafe_path",
        next_step="Copy the real files into the directory (e.g. cp -rL), or remove the link, then retry.",
    )


# --------------------------------------------------------------------------------------------------------------
# Layout


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

    problems += _tokenizer_problems(top)

    weights = sorted(name for name in top if name.lower().endswith((".safetensors", ".bin")) and _is_weight(name))
    if not weights:
        problems.append("No weights: expected *.safetensors (or pytorch_model*.bin) files next to config.json.")
    problems += _shard_problems(weights)
    for name in sorted(top):
        if name.endswith(".safetensors.index.json") and not any(w.endswith(".safetensors") for w in weights):
            problems.append(f"{name} lists safetensors shards but none are present.")
    return problems


def _tokenizer_problems(top: set[str]) -> list[str]:
    vocab = any(
        name.startswith(("vocab.", "spiece.", "sentencepiece")) or name.endswith((".tiktoken", ".model"))
        for name in top
    )
    if {"tokenizer.json", "tokenizer.model"} & top or ("tokenizer_config.json" in top and vocab):
        return []
    if "tokenizer_config.json" in top:
        return [
            "The tokenizer is incomplete: tokenizer_config.json is there but no vocabulary "
            "(tokenizer.json, tokenizer.model, vocab.json, vocab.txt or *.tiktoken)."
        ]
    return [
        "No tokenizer: expected tokenizer.json, tokenizer.model, or tokenizer_config.json with a vocabulary "
        "file (vocab.json, vocab.txt, *.tiktoken)."
    ]


def _shard_problems(weights: list[str]) -> list[str]:
    """One problem per sharded set (``<prefix>-00001-of-00004.<ext>``) with shards missing."""
    shards: dict[tuple[str, int, str], set[int]] = {}
    for name in weights:
        match = _SHARD_RE.match(name)
        if match:
            key = (match["prefix"], int(match["count"]), match["ext"])
            shards.setdefault(key, set()).add(int(match["index"]))
    problems: list[str] = []
    for (prefix, count, ext), present in sorted(shards.items()):
        missing = [i for i in range(1, count + 1) if i not in present]
        if missing:
            listed = ", ".join(f"{prefix}-{i:05d}-of-{count:05d}.{ext}" for i in missing[:3])
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            problems.append(f"{len(missing)} of {count} weight shards are missing: {listed}{more}.")
    return problems

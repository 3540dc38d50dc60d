"""Choose the files a serving engine needs (one copy of the weights), and check that they fit on the disk."""

from __future__ import annotations

import contextlib
import fnmatch
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from deployments.registry.downloads.errors import DownloadError
from deployments.registry.downloads.snapshot import RemoteFile
from deployments.registry.downloads.staging import _part_path
from deployments.units import GB

# Weight formats. When a repo has safetensors, the others are the same weights again in another format.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".msgpack", ".h5", ".ot")
DUPLICATE_WEIGHT_SUFFIXES = (".bin", ".pth", ".pt", ".gguf", ".msgpack", ".h5", ".ot")
# Small files a serving engine may read: configs, tokenizers, chat templates, and the license text that travels with
# the weights. Python files are left out: they only run with trust_remote_code, which is off by default.
DEFAULT_PATTERNS = ("*.json", "*.model", "*.txt", "*.tiktoken", "*.jinja", "tokenizer*", "*.md", "LICENSE*", "NOTICE*")
# .bin files in model repos that hold no weights.
NON_WEIGHT_BINS = {"training_args.bin", "optimizer.bin", "scheduler.bin", "scaler.bin"}


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
        "fewer files (exclude patterns), then retry.",
    )

"""A directory's manifest (checkpoints, adapters, merged models): every file with its size and sha256, the step
and the metrics at that step, written as manifest.json inside the directory once everything else is there.
Standard library only: the programs write manifests, the console verifies them (tiering, registration)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_CHUNK = 1024 * 1024


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: Path) -> list[Path]:
    return sorted(
        path
        for path in directory.rglob("*")
        if path.is_file() and path.relative_to(directory).as_posix() != MANIFEST_NAME
    )


def build_manifest(directory: str | Path, *, step: int, metrics: dict[str, Any] | None = None, **extra: Any) -> dict:
    """The manifest of `directory` as it is now (manifest.json itself excluded)."""
    root = Path(directory)
    files = [
        {"path": path.relative_to(root).as_posix(), "size": path.stat().st_size, "sha256": sha256_file(path)}
        for path in _files(root)
    ]
    return {
        "version": MANIFEST_VERSION,
        "step": step,
        "metrics": dict(metrics or {}),
        "files": files,
        "created": round(time.time(), 3),
        **extra,
    }


def write_manifest(directory: str | Path, *, step: int, metrics: dict[str, Any] | None = None, **extra: Any) -> dict:
    """Build the manifest and write it atomically (a reader never sees half a manifest); returns it."""
    root = Path(directory)
    manifest = build_manifest(root, step=step, metrics=metrics, **extra)
    partial = root / f".{MANIFEST_NAME}.partial"
    partial.write_text(json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False, default=str))
    os.replace(partial, root / MANIFEST_NAME)
    return manifest


def read_manifest(directory: str | Path) -> dict | None:
    try:
        return json.loads((Path(directory) / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None


def verify_manifest(directory: str | Path) -> list[str]:
    """What is wrong with the directory against its manifest, in sentences; empty when it is intact."""
    root = Path(directory)
    manifest = read_manifest(root)
    if manifest is None or not isinstance(manifest.get("files"), list):
        return [f"{root / MANIFEST_NAME} is missing or unreadable"]
    problems = []
    listed = set()
    for entry in manifest["files"]:
        path = root / entry["path"]
        listed.add(entry["path"])
        if not path.is_file():
            problems.append(f"{entry['path']} is missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{entry['path']} has {path.stat().st_size} bytes, the manifest says {entry['size']}")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{entry['path']} does not match its sha256")
    for path in _files(root):
        name = path.relative_to(root).as_posix()
        if name not in listed and not path.name.startswith("."):
            problems.append(f"{name} is not in the manifest")
    return problems

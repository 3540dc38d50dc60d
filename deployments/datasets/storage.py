"""Where dataset files live in DATASET_STORE: `<dataset id>/v<n>-<sha256 prefix>.<format>` per version and
`uploads/<upload id>.part` while an upload is in progress."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings


def store() -> Path:
    return Path(settings.DATASET_STORE)


def part_path(upload_id) -> Path:
    return store() / "uploads" / f"{upload_id}.part"


def version_relpath(*, dataset_id: int, version: int, sha256: str, fmt: str) -> str:
    return f"{dataset_id}/v{version}-{sha256[:12]}.{fmt}"


def absolute(relpath: str) -> Path:
    """A version's file; a stored path never leaves the store."""
    root = store().resolve()
    path = (root / relpath).resolve()
    if root not in path.parents:
        raise ValueError("dataset path outside DATASET_STORE")
    return path


def remove(path: Path) -> None:
    path.unlink(missing_ok=True)

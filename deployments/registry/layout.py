"""Where a copy of a model lives in a host's model store: one rule for the agents and the console."""

from __future__ import annotations

from pathlib import Path


def artifact_dir(store: str | Path, repo) -> Path:
    """`<store>/<org>--<name>/<commit>`: repo@commit, once per host."""
    return Path(store) / repo.repo_id.replace("/", "--") / repo.commit


def staging_dir(store: str | Path, artifact_id: int) -> Path:
    """Where a download writes before it is verified and renamed into place."""
    return Path(store) / ".staging" / f"artifact-{artifact_id}"

"""Where a copy of a model lives in a host's model store: one rule for the agents and the console."""

from __future__ import annotations

import os
from pathlib import Path


def artifact_dir(store: str | Path, repo) -> Path:
    """`<store>/<org>--<name>/<commit>`: repo@commit, once per host."""
    return Path(store) / repo.repo_id.replace("/", "--") / repo.commit


def staging_dir(store: str | Path, artifact_id: int) -> Path:
    """Where a download writes before it is verified and renamed into place."""
    return Path(store) / ".staging" / f"artifact-{artifact_id}"


def ensure_store(store: str | Path) -> Path:
    """Create the model store (and missing parents) if absent, 0755 like the model directories in it, so a fresh
    install can import into it and servers can read it whatever the umask (`make run` works under 077). An
    existing directory keeps the mode its admin gave it."""
    store = Path(store)
    missing = [path for path in (store, *store.parents) if not path.exists()]
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        os.chmod(path, 0o755)  # noqa: S103 - read-only for others on purpose: servers read the weights
    return store

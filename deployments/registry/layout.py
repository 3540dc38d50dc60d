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


def make_store_dirs(store: str | Path, path: str | Path) -> Path:
    """Create `path` and its missing parents below `store`, each 0755 whatever the umask: a server's non-root user
    walks them to reach the weights (`<store>/<org>--<name>` is made by the first download of that repo). A
    directory that exists keeps its mode."""
    store, path = Path(store), Path(path)
    ensure_store(store)
    missing = [p for p in (path, *path.parents) if p != store and store in p.parents and not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)  # noqa: S103 - read-only for others on purpose: servers read the weights
    return path


def readable_by_servers(root: str | Path) -> None:
    """Directories 0755 and files 0644 under `root` (itself included), whatever the writer's umask (the console runs
    with 077): a server container's non-root user reads what is mounted for it, and only the writer changes it.
    Symbolic links are left alone (chmod would follow them out of the store)."""
    root = Path(root)
    if root.is_symlink():
        return
    os.chmod(root, 0o755)  # noqa: S103 - as above
    for directory, subdirectories, files in os.walk(root):
        for name in subdirectories + files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                continue
            os.chmod(path, 0o755 if name in subdirectories else 0o644)

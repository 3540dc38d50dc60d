"""Runtimes: where a model server runs (see base.py for the interface)."""

from __future__ import annotations

from workers.runtimes.base import Handle, RunSpec, Runtime, RuntimeFailure, Status


def get_runtime(name: str) -> Runtime:
    """The runtime a host uses ("docker" or "process")."""
    # Imported when asked for: a process host never loads the docker SDK (nor a docker host the other).
    if name == "docker":
        from workers.runtimes.docker import DockerRuntime

        return DockerRuntime()
    if name == "process":
        from workers.runtimes.process import ProcessRuntime

        return ProcessRuntime()
    raise ValueError(f"unknown runtime {name!r}")


__all__ = ["Handle", "RunSpec", "Runtime", "RuntimeFailure", "Status", "get_runtime"]

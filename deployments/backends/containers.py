"""Where a server finds its model and listens, natively or in a container: the same for every backend apart from
its container port and where its image expects the model store (each backend's launch module passes its own)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import PurePosixPath

from deployments.backends.base import LaunchPlan


@dataclass(frozen=True)
class ContainerLaunchPlan(LaunchPlan):
    """The plan, plus the host's model store when the server runs in a container: adapter paths in it are given
    as the container sees them (the store is mounted read-only at the backend's container model store)."""

    model_store: str = ""


def launch_plan(
    *,
    container_port: int,
    container_model_store: str,
    docker: bool,
    model_dir: str,
    model_store: str,
    num_shard: int,
    instance: str,
    bind_address: str,
    port: int = 0,
    master_port: int | None = None,
    prometheus_port: int | None = None,
    native_ports: bool = True,
) -> ContainerLaunchPlan:
    """In a container the server reads the model under `container_model_store` and listens on all of the
    container's interfaces at `container_port` (published on bind_address only); natively it reads the host path
    and listens on bind_address:port, with the extra ports given (none in a container, nor for a backend without
    `native_ports`: one that picks its own ports for a tensor-parallel group)."""
    if not native_ports:
        master_port = prometheus_port = None
    return ContainerLaunchPlan(
        model_path=model_path_in_container(model_dir, model_store, container_model_store) if docker else model_dir,
        port=container_port if docker else port,
        hostname="0.0.0.0" if docker else bind_address,  # noqa: S104 - inside the container's namespace only
        num_shard=max(1, num_shard),
        instance=instance,
        native=not docker,
        master_port=None if docker else master_port,
        prometheus_port=None if docker else prometheus_port,
        model_store=model_store if docker else "",
    )


def adapter_path(path: str, plan: LaunchPlan, container_model_store: str) -> str:
    """An adapter's directory as the server sees it: in a container, its place under the mounted store. A path
    outside the host's store is left as given (spec checks keep adapters in the store); the server then reports
    that it cannot find the adapter, naming it."""
    store = getattr(plan, "model_store", "")
    if plan.native or not store:
        return path
    try:
        return model_path_in_container(posixpath.normpath(path), store, container_model_store)
    except ValueError:
        return path


def model_path_in_container(model_dir: str, model_store: str, container_model_store: str) -> str:
    """The model directory as the container sees it (ValueError when it is outside the host's store)."""
    relative = PurePosixPath(model_dir).relative_to(PurePosixPath(model_store))
    return str(PurePosixPath(container_model_store) / relative)

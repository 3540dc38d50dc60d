"""One interface for "run this server on this host and let me watch it": docker in production, process on
a single machine, CI and laptops (kubernetes later). A runtime knows nothing of Django models: the launch
job hands it a RunSpec and keeps the Handle it gets back (labels make it findable after a restart)."""

from __future__ import annotations

import functools
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from audit.telemetry import tracer

LABEL_MANAGED = "llmdeploy.managed"
LABEL_DEPLOYMENT = "llmdeploy.deployment"
LABEL_JOB = "llmdeploy.job"  # a job program (fine-tune, merge, stats): found again after a worker restart
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class RunSpec:
    name: str  # unique per deployment, e.g. "llmdeploy-12-chat"
    labels: dict[str, str]
    args: list[str]  # launcher arguments, built only by the spec's backend (deployments/backends/<name>/launch.py)
    env: dict[str, str]  # explicit and allow-listed: nothing inherited from the worker
    model_dir: str  # host path of the model directory (inside model_store)
    model_store: str  # host path of the model store; docker mounts model_dir and adapter_dirs from it under /data
    image: str = ""  # docker only
    # docker only: when set, the local image must have this digest (its id, or a repo digest it was pulled by);
    # it then runs by id, so a re-tag on the host cannot swap what runs.
    image_digest: str = ""
    gpu_indexes: list[int] = field(default_factory=list)  # [] = no GPU at all
    port: int = 0  # host port to listen on (0: the runtime picks a free one)
    bind_address: str = "127.0.0.1"  # loopback or an internal network, never published openly
    container_port: int = 80
    secret_files: dict[str, str] = field(default_factory=dict)  # env var naming the file -> content
    # Variables whose values the server needs in its environment (an API key): each arrives as a 0600 file that
    # a small sh wrapper reads into the variable at start, so neither the command line, the configured
    # environment (`docker inspect`) nor the job log holds the value.
    secret_env: dict[str, str] = field(default_factory=dict)
    shm_size: str = "1g"
    memory_limit: str | None = None
    stop_grace: float = 90.0
    # A job program instead of a model server: the command to run before `args` (e.g. the ML environment's python
    # -m workers.jobs.finetune); empty means the backend's launcher.
    program: list[str] = field(default_factory=list)
    workdir: str = ""  # where a job program runs (its output directory); empty: the runtime's own
    # The backend's launcher as a native install names it (["text-generation-launcher"], ["vllm", "serve"]), and
    # the workers/jobs module that stands in for it where it is not installed (same arguments). Containers run
    # their image's entrypoint, which is the launcher itself.
    launcher: list[str] = field(default_factory=lambda: ["text-generation-launcher"])
    launcher_stand_in: str = "serve"
    adapter_dirs: list[str] = field(default_factory=list)  # host paths of the LoRA adapters' directories (in the store)


def secret_env_loader(files: dict[str, str]) -> str:
    """sh lines that read each variable from its file and export it (`files`: variable -> path). A missing
    file stops the start (set -e): a server must not come up without the key it was meant to require."""
    lines = ["set -e"]
    for name, path in sorted(files.items()):
        if not ENV_NAME.fullmatch(name):
            raise RuntimeFailure(f"{name!r} is not an environment variable name", cause="config")
        # read fails at end of file without a newline, yet has set the variable
        lines.append(f'IFS= read -r {name} < {shlex.quote(path)} || [ -n "${name}" ]')
        lines.append(f"export {name}")
    lines.append("set +e")
    return "; ".join(lines)


@dataclass
class Handle:
    runtime: str
    ref: str  # container id, or the process group id
    name: str
    labels: dict[str, str]
    port: int
    endpoint: str  # http://address:port the console uses
    command: list[str] = field(default_factory=list)  # the program and arguments that run (TGI, or serve.py)


@dataclass
class Status:
    state: str  # "running", "exited" or "missing"
    exit_code: int | None = None
    oom_killed: bool = False
    detail: str = ""

    @property
    def alive(self) -> bool:
        return self.state == "running"


class RuntimeFailure(Exception):
    """The runtime could not do what was asked; the message says why (e.g. the image is missing)."""

    def __init__(self, message: str, *, cause: str = "runtime") -> None:
        super().__init__(message)
        self.cause = cause


def traced(operation: str) -> Callable:
    """Decorator for a runtime method taking a RunSpec or a Handle: the call as a span `runtime.<operation>` (in the
    job's trace when a job calls it), naming the runtime and the server; a failure is recorded on the span."""

    def decorate(method: Callable) -> Callable:
        @functools.wraps(method)
        def wrapper(self, subject: RunSpec | Handle, *args, **kwargs):
            attributes = {"llmdeploy.runtime": self.name, "llmdeploy.server.name": subject.name}
            with tracer.start_as_current_span(f"runtime.{operation}", attributes=attributes):
                return method(self, subject, *args, **kwargs)

        return wrapper

    return decorate


class Runtime(Protocol):
    name: str

    def start(self, spec: RunSpec) -> Handle: ...

    def status(self, handle: Handle) -> Status: ...

    def logs(self, handle: Handle, since: int) -> tuple[list[str], int]:
        """Output lines after cursor `since` (0: from the start) and the cursor to pass next time."""
        ...

    def stop(self, handle: Handle, grace: float) -> Status: ...

    def remove(self, handle: Handle) -> None: ...

    def find(self, labels: dict[str, str]) -> list[Handle]:
        """Servers (running or exited, not removed) carrying all these labels."""
        ...

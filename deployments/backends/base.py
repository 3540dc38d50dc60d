"""What a serving backend provides, behind one interface: TGI today (deployments/backends/tgi), vLLM next.

The console never spells a backend's flags, environment, routes or log lines anywhere else: specs, the planner,
the serve job and the diagnosis ask `get_backend(spec.backend)`. Runtimes know nothing of backends. A backend
imports no Django beyond translation markers (an import contract checks it).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import requests

from deployments.backends.diagnosis import Diagnosis, RuleBook
from deployments.backends.diagnosis import diagnose as run_rules


class SpecError(Exception):
    """A spec value the backend refuses: the field at fault and a message the user can act on."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.message, self.field = message, field


# The DeploymentSpec fields every backend reads (each adds its own to its `spec_fields`).
COMMON_SPEC_FIELDS = frozenset({"quantize", "dtype", "kv_cache_dtype", "lora_adapters", "extra_env"})

# A check gets the cleaned spec values and what the checkpoint says of itself; it raises SpecError.
SpecCheck = Callable[[dict[str, Any], dict[str, Any]], None]


@dataclass(frozen=True)
class FlagTable:
    """A launcher's flags for one release, read from workers/jobs/flags/<backend>.json (the file serve.py reads)."""

    program: str
    release: str
    flags: dict[str, dict[str, Any]]  # long flag -> {"env", "default", "kind", "choices"}

    @classmethod
    def load(cls, backend: str) -> FlagTable:
        # Read as package data, not imported: job programs and the console share the file, not the code.
        text = resources.files("workers.jobs.flags").joinpath(f"{backend}.json").read_text(encoding="utf-8")
        table = json.loads(text)
        return cls(table["program"], table["release"], {item["name"]: item for item in table["flags"]})

    def choices(self, flag: str) -> tuple[str, ...]:
        return tuple(self.flags[flag]["choices"])

    def unknown(self, args: Iterable[str]) -> list[str]:
        """The flags in `args` the launcher does not have."""
        return [arg for arg in args if arg.startswith("--") and arg not in self.flags]


@dataclass(frozen=True)
class MemorySemantics:
    """How the backend uses GPU memory, for the planner and placement.

    "fill" (TGI): the server's warm-up fills each GPU's free memory with KV cache up to (1 - keep_free_fraction)
    of it; placement needs the planner's per-GPU estimate free beside that share. "reserve" (vLLM): the server
    takes up to gpu_memory_utilization x each GPU's memory (`default_utilization` when the spec leaves it empty)
    and fills what weights, activations and CUDA graphs leave of that share with KV blocks; placement needs the
    whole share free and reserves it on each GPU (deployments/sizing/vllm.py)."""

    keep_free_fraction: float  # the share of each GPU the server never fills (TGI: 1 - its wiggle room)
    kv_cache: str  # what sizes the KV cache, in words shown to users
    mode: str = "fill"  # "fill" or "reserve"
    default_utilization: float | None = None  # "reserve": the share of each GPU taken when the spec says none

    @property
    def reserves(self) -> bool:
        """Whether the server takes a fixed share of each GPU at start (vLLM) rather than filling it (TGI)."""
        return self.mode == "reserve"


@dataclass(frozen=True)
class LaunchPlan:
    """What the launcher needs beyond the spec: where the model is as the server sees it, and the port."""

    model_path: str
    port: int
    hostname: str
    num_shard: int
    instance: str  # unique per server on a host (socket paths, ports of native instances)
    native: bool  # several servers share one network namespace (process runtime)
    master_port: int | None = None
    prometheus_port: int | None = None


class Backend(ABC):
    """A serving backend: its flags as data, launch arguments and a clean environment from a spec, allowed
    images, health and info calls, metric names, log diagnosis rules and its memory semantics."""

    name: str
    label: str
    # The launcher as a native install names it, and the workers/jobs module that stands in for it where it is
    # not installed (same arguments; the runtimes choose, RunSpec.launcher). An image's entrypoint is the launcher.
    launcher: tuple[str, ...]
    launcher_stand_in: str
    # The DeploymentSpec fields this backend reads (beyond model, device, GPUs, replicas, image, credential):
    # a spec that sets another backend's field is refused, naming it.
    spec_fields: frozenset[str]
    default_image: str
    container_port: int
    container_model_store: str
    allowed_env: frozenset[str]
    token_file_env: str  # the variable naming the file that holds a Hub token (never the token itself)
    server_key_env: str  # the variable the server reads its API key from (loaded from a file at start)
    ready_line: str
    metric_names: tuple[str, ...]
    memory: MemorySemantics
    rules: RuleBook
    spec_checks: tuple[SpecCheck, ...]
    # Whether the server itself answers TGI's native routes (/generate, /generate_stream, /info): the gateway
    # passes them through to one that does and translates them to the OpenAI completions route for one that does not.
    native_generate_routes: bool = False

    @property
    def flags(self) -> FlagTable:
        return FlagTable.load(self.name)

    @abstractmethod
    def launch_plan(self, **where: Any) -> LaunchPlan:
        """Where the server finds the model and listens, as it sees it."""

    @abstractmethod
    def launcher_args(self, spec: Any, plan: LaunchPlan) -> list[str]:
        """The launcher's arguments for a DeploymentSpec."""

    @abstractmethod
    def launch_env(self, spec: Any, *, gpu_indexes: list[int], native: bool) -> dict[str, str]:
        """The server's whole environment."""

    def command_line(self, spec: Any, plan: LaunchPlan, *, port_shown: str | None = None) -> list[str]:
        """The whole command as a person reads it; `port_shown` replaces a port chosen only at launch."""
        args = self.launcher_args(spec, plan)
        if port_shown is not None:
            args[args.index("--port") + 1] = port_shown
        return [*self.launcher, *args]

    def served_model_name(self, spec: Any, *, deployment_name: str) -> str:
        """The name the server serves the base model under on its OpenAI routes (TGI: any name is taken, and the
        gateway has always sent the deployment's)."""
        return deployment_name

    def upstream_model(self, served: str, adapter: str | None) -> str:
        """The `model` the gateway and the playground send upstream for the base model (`served`, from
        served_model_name) or one of its LoRA adapters: TGI and vLLM both take an adapter by its name."""
        return adapter or served

    def default_quantize(self, values: dict[str, Any], checkpoint: dict[str, Any]) -> str:
        """The quantization a spec launches with when it names none: empty, the server reads the checkpoint."""
        return ""

    def check_spec(self, values: dict[str, Any], checkpoint: dict[str, Any]) -> None:
        """Run every check the backend contributes to spec cleaning (SpecError on the first refusal)."""
        for check in self.spec_checks:
            check(values, checkpoint)

    @staticmethod
    def auth_headers(key: str = "") -> dict[str, str]:
        """What the console sends with every call to a server launched with an API key."""
        return {"Authorization": f"Bearer {key}"} if key else {}

    def health(self, endpoint: str, timeout: float = 3.0, *, key: str = "") -> bool:
        """GET /health == 200. Connection errors mean "still starting" while the process lives."""
        try:
            response = requests.get(f"{endpoint}/health", timeout=timeout, headers=self.auth_headers(key))
            return response.status_code == 200
        except requests.RequestException:
            return False

    def info(self, endpoint: str, timeout: float = 5.0, *, key: str = "") -> dict | None:
        """GET /info, or None when it does not answer with JSON."""
        try:
            response = requests.get(f"{endpoint}/info", timeout=timeout, headers=self.auth_headers(key))
            return response.json() if response.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def server_name(self, info: dict | None) -> str:
        """What answers at a deployment's endpoint, in words, from its /info."""
        version = (info or {}).get("version")
        return f"{self.label} {version}" if version else self.label

    def diagnose(self, lines: Iterable[str], *, exit_code: int | None = None, context: dict | None = None) -> Diagnosis:
        """The cause of a failed launch, read from its log with this backend's rules."""
        return run_rules(lines, self.rules, exit_code=exit_code, context=context)

    def mask_request_content(self, lines: list[str], *, carry: bool = False) -> tuple[list[str], bool]:
        """The server's log lines as a reader without view_data sees them: every part that carries what a request
        sent (prompts, outputs, parameters) replaced; returns them and whether the last one leaves such content
        open (`carry`: a multi-line prompt goes on in the next batch). A backend that does not say which of its
        lines carry requests shows none of them."""
        return ["[masked: request content]"] * len(lines), False

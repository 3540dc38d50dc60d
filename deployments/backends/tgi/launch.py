"""TGI's launch, as the console drives it: the only place its launcher arguments and the server's environment
are built (TGI 3.3's launcher flags, workers/jobs/flags/tgi.json).

Everything is explicit: every setting is a flag, the environment is an allow-list (TGI reads generic names
such as PORT, HOSTNAME, API_KEY and MODEL_ID, so nothing may leak in from a worker's environment).
"""

from __future__ import annotations

from functools import partial

from deployments.backends import containers
from deployments.backends.base import LaunchPlan
from deployments.backends.containers import ContainerLaunchPlan

DEFAULT_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.5"
CONTAINER_PORT = 80  # the TGI image sets PORT=80
CONTAINER_MODEL_STORE = "/data"
READY_LINE = "Connected"

# Variables a spec may set on the server (anything else is refused at the form and the API).
ALLOWED_ENV = frozenset(
    {
        "PYTORCH_CUDA_ALLOC_CONF",
        "NCCL_SHM_DISABLE",
        "NCCL_DEBUG",
        "NCCL_P2P_DISABLE",
        "LOG_LEVEL",
        "RUST_BACKTRACE",
        "TGI_WIGGLE_ROOM",
        "ATTENTION",
        "PREFIX_CACHING",
        "PREFILL_CHUNKING",
        "OMP_NUM_THREADS",
        "CUDA_GRAPHS",
        "MAX_JOBS",
        "TORCH_CUDA_ARCH_LIST",
    }
)
# The launcher reads its key from API_KEY. Upstream TGI then passes it on to text-generation-router as
# `--api-key <key>`, so on a host the router's command line carries it (docs/operations.md, threat model).
SERVER_KEY_ENV = "API_KEY"
# /info's `served_by` of the project's CPU development server (workers/jobs/serve.py), which stands in for TGI.
DEVELOPMENT_SERVER = "workers.jobs.serve"
DEVELOPMENT_SERVER_NAME = "serve.py"  # how the console names it (Deployment.server starts with it)
# LOG_LEVEL is a tracing filter: a level, or directives such as `warn,text_generation_router=debug`. At debug or
# trace the router logs every prompt and output (`Input: ...`, `Output: ...`), and a directive that names a
# target without a level enables trace for it, so only these levels pass. No other allowed variable logs requests.
QUIET_LOG_LEVELS = frozenset({"off", "error", "warn", "info"})


def log_level_refused(value: str) -> bool:
    """True when a LOG_LEVEL value would make the server log what requests send (any directive beyond info)."""
    for directive in str(value).split(","):
        directive = directive.strip()
        if not directive:
            continue
        level = directive.rsplit("=", 1)[1] if "=" in directive else directive
        if level.strip().lower() not in QUIET_LOG_LEVELS:
            return True
    return False


TOKEN_FILE_ENV = "HF_TOKEN_PATH"  # noqa: S105 - a variable name; huggingface_hub reads the token from this file: never an env value


# The plan with the host's model store (adapter paths are given as the container sees them).
TgiLaunchPlan = ContainerLaunchPlan


# Where the server finds the model and listens, as it sees it: in a container the store is /data and the server
# listens on all of the container's interfaces at CONTAINER_PORT (published on bind_address only).
launch_plan = partial(
    containers.launch_plan, container_port=CONTAINER_PORT, container_model_store=CONTAINER_MODEL_STORE
)


def launcher_args(spec, plan: LaunchPlan) -> list[str]:
    """text-generation-launcher's arguments for a DeploymentSpec (every flag checked against TGI's table)."""
    args = [
        "--model-id",
        plan.model_path,
        "--hostname",
        plan.hostname,
        "--port",
        str(plan.port),
        "--num-shard",
        str(plan.num_shard),
        "--max-concurrent-requests",
        str(spec.max_concurrent_requests),
        "--usage-stats",
        "off",
    ]
    if spec.quantize:
        args += ["--quantize", spec.quantize]
    if spec.dtype:
        args += ["--dtype", spec.dtype]
    if spec.kv_cache_dtype:
        args += ["--kv-cache-dtype", spec.kv_cache_dtype]
    for flag, value in (
        ("--max-input-tokens", spec.max_input_tokens),
        ("--max-total-tokens", spec.max_total_tokens),
        ("--max-batch-prefill-tokens", spec.max_batch_prefill_tokens),
    ):
        if value:
            args += [flag, str(value)]
    if spec.cuda_memory_fraction and spec.cuda_memory_fraction < 1.0:
        args += ["--cuda-memory-fraction", f"{spec.cuda_memory_fraction:g}"]
    if spec.lora_adapters:
        args += [
            "--lora-adapters",
            ",".join(
                f"{a['name']}={adapter_path(a['path'], plan)}" if a.get("path") else a["name"]
                for a in spec.lora_adapters
            ),
        ]
    if spec.device == "cpu":
        args += ["--disable-custom-kernels"]
    if plan.native:
        # Several native servers on one host must not share sockets or ports.
        args += ["--shard-uds-path", f"/tmp/{plan.instance}-tgi"]  # noqa: S108 - per-instance socket prefix
        if plan.master_port:
            args += ["--master-port", str(plan.master_port)]
        if plan.prometheus_port:
            args += ["--prometheus-port", str(plan.prometheus_port)]
    return args


def launch_env(spec, *, gpu_indexes: list[int], native: bool) -> dict[str, str]:
    """The server's whole environment (the runtime adds nothing but PATH-like basics for native runs)."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_ENABLE_HF_TRANSFER": "0"}
    if native:
        # Docker selects GPUs with device requests; a native process sees exactly its GPUs, or none.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_indexes)) if spec.device == "gpu" else ""
    for name, value in (spec.extra_env or {}).items():
        if name in ALLOWED_ENV and not (name == "LOG_LEVEL" and log_level_refused(value)):
            env[name] = str(value)  # a spec saved before LOG_LEVEL was checked launches at TGI's default (info)
    return env


def adapter_path(path: str, plan: LaunchPlan) -> str:
    """An adapter's directory as the server sees it: in a container, its place under /data."""
    return containers.adapter_path(path, plan, CONTAINER_MODEL_STORE)


def model_path_in_container(model_dir: str, model_store: str) -> str:
    """The model directory as the container sees it (the store is mounted read-only at /data)."""
    return containers.model_path_in_container(model_dir, model_store, CONTAINER_MODEL_STORE)

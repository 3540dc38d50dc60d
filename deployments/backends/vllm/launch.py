"""vLLM's launch, as the console drives it: the only place `vllm serve`'s arguments and the server's environment
are built (vLLM 0.34.0's flags, workers/jobs/flags/vllm.json).

The launcher is `vllm serve <model>`: natively the `vllm` program (or its stand-in, workers/jobs/vllm_serve.py),
in a container the image's ENTRYPOINT (["vllm", "serve"] in vLLM's docker/Dockerfile), so the arguments start
with the model path either way. Every setting is a flag and the environment is an allow-list.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

from deployments.backends import containers
from deployments.backends.base import LaunchPlan
from deployments.backends.containers import ContainerLaunchPlan

RELEASE = "0.34.0"
DEFAULT_IMAGE = f"vllm/vllm-openai:v{RELEASE}"  # the admin pins its digest on the allowed images list
CONTAINER_PORT = 8000  # vLLM's default --port; the container listens there
CONTAINER_MODEL_STORE = "/data"  # where the docker runtime mounts the host's model store (read-only)
# uvicorn's line once vLLM's API server has started and answers (after the engine loaded and warmed up).
READY_LINE = "Application startup complete."
# /version's `served_by` of the project's development server (workers/jobs/vllm_serve.py), which stands in for
# vLLM where it is not installed, and how the console names it.
DEVELOPMENT_SERVER = "workers.jobs.vllm_serve"
DEVELOPMENT_SERVER_NAME = "vllm_serve.py"
# The share of each GPU vLLM may take when the spec leaves it empty. vLLM 0.34 itself would take up to all of it
# (1.0 with its extensible KV cache); the console always passes a share so placement knows what each server holds.
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9
# The name the server serves the base model under when nothing better is known (see served_model_name).
FALLBACK_SERVED_NAME = "model"

# The spec's choices in vLLM's words: TGI names the e4m3 format by its torch dtype (float8_e4m3fn).
KV_CACHE_DTYPES = {"fp8_e4m3fn": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"}
# The spec's quantization choices vLLM 0.34 has (--quantization); the others are TGI's own (checks refuse them).
QUANTIZATIONS = {"fp8": "fp8", "awq": "awq", "gptq": "gptq", "compressed-tensors": "compressed-tensors"}
# --max-lora-rank's choices (vLLM refuses an adapter of a higher rank than the flag allows; 16 by default).
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
DEFAULT_LORA_RANK = 16
# Routes the console polls; their access lines would bury the server's own.
QUIET_ROUTES = "/health,/metrics,/version"

# Variables a spec may set on the server (anything else is refused at the form and the API). None of them logs
# what requests send: VLLM_DEBUG_LOG_API_SERVER_RESPONSE and VLLM_SERVER_DEV_MODE stay out, and VLLM_LOGGING_LEVEL
# is held to INFO or quieter (checks.py), as vLLM logs request details at DEBUG.
ALLOWED_ENV = frozenset(
    {
        "PYTORCH_CUDA_ALLOC_CONF",
        "NCCL_DEBUG",
        "NCCL_P2P_DISABLE",
        "NCCL_SHM_DISABLE",
        "NCCL_IB_DISABLE",
        "OMP_NUM_THREADS",
        "VLLM_LOGGING_LEVEL",
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN",
        "VLLM_WORKER_MULTIPROC_METHOD",
        "VLLM_LOG_STATS_INTERVAL",
        "VLLM_USE_DEEP_GEMM",
        "VLLM_USE_FLASHINFER_SAMPLER",
        "VLLM_DISABLE_COMPILE_CACHE",
        "VLLM_SKIP_P2P_CHECK",
        "VLLM_ENABLE_CUDA_COMPATIBILITY",
        "VLLM_CPU_KVCACHE_SPACE",
        "VLLM_CPU_OMP_THREADS_BIND",
        "VLLM_CPU_NUM_OF_RESERVED_CPU",
    }
)
QUIET_LOG_LEVELS = frozenset({"INFO", "WARNING", "ERROR", "CRITICAL"})
# vLLM's API server reads its key from VLLM_API_KEY when --api-key is not given (the key never goes on the
# command line: the runtime loads it from a 0600 file at start, RunSpec.secret_env).
SERVER_KEY_ENV = "VLLM_API_KEY"
TOKEN_FILE_ENV = "HF_TOKEN_PATH"  # noqa: S105 - a variable name; huggingface_hub reads the token from this file


def log_level_refused(value: str) -> bool:
    """True when a VLLM_LOGGING_LEVEL value would show what requests send (DEBUG and below, or anything unknown)."""
    return str(value).strip().upper() not in QUIET_LOG_LEVELS


# The plan with the host's model store (adapter paths are given as the container sees them).
VllmLaunchPlan = ContainerLaunchPlan


# Where the server finds the model and listens, as it sees it. vLLM picks its own free ports for the processes of a
# tensor-parallel group and serves /metrics on its API port, so the TGI-only ports go unused.
launch_plan = partial(
    containers.launch_plan,
    container_port=CONTAINER_PORT,
    container_model_store=CONTAINER_MODEL_STORE,
    native_ports=False,
)


def served_model_name(spec: Any) -> str:
    """The name the server serves the base model under (`model` in OpenAI calls): the model's Hub id, the same on
    every host and in every runtime (vLLM would otherwise serve it under its host path)."""
    artifact = getattr(spec, "artifact", None)
    repo = getattr(artifact, "repo", None) if artifact is not None else None
    repo_id = getattr(repo, "repo_id", "") if repo is not None else ""
    return repo_id or FALLBACK_SERVED_NAME


def launcher_args(spec: Any, plan: LaunchPlan) -> list[str]:
    """`vllm serve`'s arguments for a DeploymentSpec (every flag checked against vLLM's table by the tests)."""
    args = [
        plan.model_path,
        "--served-model-name",
        served_model_name(spec),
        "--host",
        plan.hostname,
        "--port",
        str(plan.port),
        "--tensor-parallel-size",
        str(plan.num_shard),
        # Prompts and outputs stay out of the server log (off by default in 0.34; said so a default cannot change).
        "--no-enable-log-requests",
        "--disable-access-log-for-endpoints",
        QUIET_ROUTES,
    ]
    utilization = spec.gpu_memory_utilization
    if spec.device != "cpu":  # on CPU vLLM sizes its KV cache from VLLM_CPU_KVCACHE_SPACE
        utilization = utilization or DEFAULT_GPU_MEMORY_UTILIZATION
    if utilization:
        args += ["--gpu-memory-utilization", f"{utilization:g}"]
    for flag, value in (
        ("--max-model-len", spec.max_model_len),
        ("--max-num-seqs", spec.max_num_seqs),
        ("--max-num-batched-tokens", spec.max_num_batched_tokens),
    ):
        if value:
            args += [flag, str(value)]
    if spec.quantize:
        args += ["--quantization", QUANTIZATIONS.get(spec.quantize, spec.quantize)]
    if spec.dtype:
        args += ["--dtype", spec.dtype]
    if spec.kv_cache_dtype:
        args += ["--kv-cache-dtype", KV_CACHE_DTYPES.get(spec.kv_cache_dtype, spec.kv_cache_dtype)]
    adapters = [adapter for adapter in spec.lora_adapters or [] if adapter.get("name")]
    if adapters:
        args += [
            "--enable-lora",
            "--lora-modules",
            # A path-less adapter is a Hub id to vLLM (spec checks keep adapters in the model store).
            *(f"{a['name']}={adapter_path(a['path'], plan) if a.get('path') else a['name']}" for a in adapters),
            "--max-loras",
            str(len(adapters)),  # all of them in one batch
        ]
        rank = max((lora_rank(adapter["path"]) or 0) if adapter.get("path") else 0 for adapter in adapters)
        if rank > DEFAULT_LORA_RANK:
            args += ["--max-lora-rank", str(next((r for r in LORA_RANKS if r >= rank), LORA_RANKS[-1]))]
    return args


def launch_env(spec: Any, *, gpu_indexes: list[int], native: bool) -> dict[str, str]:
    """The server's whole environment (the runtime adds nothing but PATH-like basics for native runs)."""
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_DO_NOT_TRACK": "1",
    }
    if not native:
        # The container's root is read-only: vLLM's and torch's caches go to its /tmp (a tmpfs).
        env |= {
            "HOME": "/tmp",  # noqa: S108
            "XDG_CACHE_HOME": "/tmp/.cache",  # noqa: S108
            "XDG_CONFIG_HOME": "/tmp/.config",  # noqa: S108
            "VLLM_CACHE_ROOT": "/tmp/.cache/vllm",  # noqa: S108
            "VLLM_CONFIG_ROOT": "/tmp/.config/vllm",  # noqa: S108
        }
    if native:
        # Docker selects GPUs with device requests; a native process sees exactly its GPUs, or none.
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpu_indexes)) if spec.device == "gpu" else ""
    if spec.device == "cpu":
        # vLLM 0.34 has no --device: a CPU build picks its platform itself, and this names it for any build.
        env["VLLM_TARGET_DEVICE"] = "cpu"
    for name, value in (spec.extra_env or {}).items():
        if name in ALLOWED_ENV and not (name == "VLLM_LOGGING_LEVEL" and log_level_refused(value)):
            env[name] = str(value)
    return env


def lora_rank(path: str) -> int | None:
    """An adapter's rank (`r` in its adapter_config.json), when its directory is readable here."""
    try:
        config = json.loads((Path(path) / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rank = config.get("r") if isinstance(config, dict) else None
    return rank if isinstance(rank, int) and not isinstance(rank, bool) and rank > 0 else None


def adapter_path(path: str, plan: LaunchPlan) -> str:
    """An adapter's directory as the server sees it: in a container, its place under /data."""
    return containers.adapter_path(path, plan, CONTAINER_MODEL_STORE)


def model_path_in_container(model_dir: str, model_store: str) -> str:
    """The model directory as the container sees it (the store is mounted read-only at /data)."""
    return containers.model_path_in_container(model_dir, model_store, CONTAINER_MODEL_STORE)

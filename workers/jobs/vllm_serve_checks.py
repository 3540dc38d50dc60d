"""vllm_serve.py's log lines and refusals in vLLM 0.34's shapes: the logger's line, the traceback a failed start
ends with, and the checks that refuse a start (arguments, model directory, LoRA modules, max_model_len, memory for
the weights and the KV cache) as vLLM refuses them. Imports nothing from Django.
"""

from __future__ import annotations

import argparse
import os
import traceback
from datetime import datetime
from pathlib import Path

from workers.jobs import serve_model
from workers.jobs.serve_model import GIB, Adapter, LoadError

MEMORY_HINT = (
    "Try increasing `gpu_memory_utilization` when initializing the engine (this flag also controls CPU memory "
    "reservation on the CPU backend, despite its name)."
)
DOCS = "See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
DEFAULT_UTILIZATION = 0.92  # vLLM's when the KV cache is not extensible
PID = os.getpid()


# -- logging: vLLM's line shape (the console's diagnosis reads it) ----------------------------------------------
def log(level: str, message: str, where: str, *, engine: bool = False) -> None:
    """A vLLM logger line; a message of several lines repeats the prefix on each, as vLLM's formatter does."""
    prefix = f"({'EngineCore' if engine else 'APIServer'} pid={PID}) {level} {datetime.now():%m-%d %H:%M:%S} [{where}] "
    print("\n".join(prefix + line for line in message.split("\n")), flush=True)


class StartupError(Exception):
    """Ends the start with vLLM's lines: the cause `lines` (an exception's last lines), raised in the engine
    (`engine=True`) or the API server."""

    def __init__(self, *lines: str, engine: bool = False) -> None:
        super().__init__(lines[0])
        self.lines, self.engine = lines, engine

    def report(self) -> None:
        frames = "".join(traceback.format_tb(self.__traceback__)).rstrip("\n")
        cause = "\n".join(self.lines)
        if self.engine:  # the engine logs its failure; the API server's traceback names the engine process
            log(
                "ERROR",
                f"EngineCore failed to start.\nTraceback (most recent call last):\n{frames}\n{cause}",
                "core.py:1757",
                engine=True,
            )
            cause = "RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): " + (
                "{'EngineCore': 1}"
            )
        print(f"Traceback (most recent call last):\n{frames}\n{cause}", flush=True)


def validation_error(config: str, message: str, model: str) -> StartupError:
    """What pydantic says of a config's __post_init__ failing (vLLM's configs are pydantic dataclasses)."""
    return StartupError(
        f"pydantic_core._pydantic_core.ValidationError: 1 validation error for {config}",
        f"  Value error, {message} [type=value_error, input_value=ArgsKwargs((), {{'model': '{model}', ...}}), "
        "input_type=ArgsKwargs]",
        "    For further information visit https://errors.pydantic.dev/2.12/v/value_error",
    )


# -- checks -------------------------------------------------------------------------------------------------------
def check(args: argparse.Namespace) -> None:
    utilization = args.gpu_memory_utilization
    if utilization is not None and not 0 < utilization <= 1:
        kind = "greater_than" if utilization <= 0 else "less_than_equal"
        bound = "greater than 0" if utilization <= 0 else "less than or equal to 1"
        raise StartupError(
            "pydantic_core._pydantic_core.ValidationError: 1 validation error for CacheConfig",
            "gpu_memory_utilization",
            f"  Input should be {bound} [type={kind}, input_value={utilization}, input_type=float]",
        )
    if args.quantization:
        raise validation_error(
            "ModelConfig",
            f"vllm_serve.py cannot apply --quantization {args.quantization}: run vLLM on a GPU host for quantized "
            "serving, or serve the unquantized checkpoint.",
            args.model,
        )
    if (args.tensor_parallel_size or 1) > 1:
        log(
            "WARNING",
            f"vllm_serve.py does not shard: --tensor-parallel-size {args.tensor_parallel_size} is "
            "accepted for the placement, and the model runs whole on one device",
            "vllm_serve.py:1",
        )


def resolve(args: argparse.Namespace) -> Path:
    try:
        return serve_model.resolve_model_dir(args.model, args.revision, args.download_dir)
    except LoadError as exc:
        if exc.reason in ("not_found", "not_a_model", "bad_config"):
            raise validation_error(
                "ModelConfig",
                f"Invalid repository ID or local directory specified: '{args.model}'.\n"
                "Please verify the following requirements:\n"
                "1. Provide a valid Hugging Face repository ID.\n"
                "2. Specify a local directory that contains a recognized configuration file.\n"
                "   - For Hugging Face models: ensure the presence of a 'config.json'.\n"
                "   - For Mistral models: ensure the presence of a 'params.json'.\n",
                args.model,
            ) from exc
        raise StartupError(f"RuntimeError: Cannot find any model weights with `{args.model}`", engine=True) from exc


def check_adapters(args: argparse.Namespace, loras: list) -> list[tuple[Adapter, Path]]:
    """The LoRA modules' directories, checked before the model loads (vLLM finds these after loading it)."""
    if loras and not args.enable_lora:
        raise StartupError("ValueError: LoRA is not enabled. Use --enable-lora to enable LoRA.")
    found = []
    for lora in loras:
        adapter, path = Adapter(lora.name, lora.path), Path(lora.path)
        if not (path / "adapter_config.json").is_file():
            raise StartupError(f"ValueError: Loading lora {lora.name} failed: No adapter found for {lora.path}")
        try:
            config = serve_model.adapter_config(adapter, path)
        except LoadError as exc:
            raise StartupError(f"ValueError: {exc.message.split(': ', 1)[-1]}") from exc
        rank = max([int(config.get("r") or 0), *map(int, (config.get("rank_pattern") or {}).values())])
        if rank > args.max_lora_rank:
            raise StartupError(f"ValueError: LoRA rank {rank} is greater than max_lora_rank {args.max_lora_rank}.")
        found.append((adapter, path))
    return found


def max_model_len_of(args: argparse.Namespace, config) -> int:
    derived = serve_model.context_limit(config)
    if args.max_model_len in (None, -1):
        return derived
    if args.max_model_len > derived and os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0") in ("0", "false"):
        raise validation_error(
            "ModelConfig",
            f"User-specified max_model_len ({args.max_model_len}) is greater than the derived max_model_len "
            f"(max_position_embeddings={derived} or model_max_length=None in model's config.json). To allow "
            "overriding this maximum, set the env var VLLM_ALLOW_LONG_MAX_MODEL_LEN=1. VLLM_ALLOW_LONG_MAX_MODEL_LEN "
            "must be used with extreme caution. If the model uses relative position encoding (RoPE), positions "
            "exceeding derived_max_model_len lead to nan. If the model uses absolute position encoding, positions "
            "exceeding derived_max_model_len will cause a CUDA array out-of-bounds error.",
            args.model,
        )
    return args.max_model_len


def gib(value: float) -> str:
    """vLLM's format_gib: GiB rounded to two places, as Python prints the float."""
    return f"{round(value / GIB, 2)}"


def explicit_kv_bytes(args: argparse.Namespace, device: str) -> int | None:
    """The KV cache's size when it is given: --kv-cache-memory-bytes, or VLLM_CPU_KVCACHE_SPACE (GiB) on a CPU."""
    if args.kv_cache_memory_bytes:
        return int(args.kv_cache_memory_bytes)
    space = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "").strip()
    if device == "cpu" and space not in ("", "0"):
        return int(float(space) * GIB)
    return None


def kv_capacity(args, device: str, need: int, per_token: int, max_model_len: int) -> int:
    """KV-cache tokens left after the weights in the reservation, as vLLM sizes them; refuses as vLLM does."""
    utilization = args.gpu_memory_utilization or DEFAULT_UTILIZATION
    free, total = serve_model.memory(device)
    if need > free:
        if device == "cuda":
            cause = (
                f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate {gib(need)} GiB. GPU 0 has a total "
                f"capacity of {gib(total)} GiB of which {gib(free)} GiB is free."
            )
        else:
            cause = (
                "RuntimeError: [enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: "
                f"you tried to allocate {need} bytes."
            )
        raise StartupError(cause, engine=True)
    explicit = explicit_kv_bytes(args, device)
    if explicit is not None:  # vLLM sizes the KV cache as told, not from the utilization
        if explicit > free - need:
            raise StartupError(
                f"ValueError: Available memory on node 0 ({gib(free - need)}/{gib(total)} GiB) on kv cache allocation "
                f"is less than requested memory for kv ({gib(explicit)} GiB). Decrease --kv-cache-memory-bytes, "
                "VLLM_CPU_KVCACHE_SPACE, or reduce CPU memory used by other processes.",
                engine=True,
            )
        utilization = (need + explicit) / (total if device == "cuda" else free)
    budget = utilization * (total if device == "cuda" else free)
    if device == "cuda" and free < budget:
        raise StartupError(
            f"ValueError: Free memory on device cuda:0 ({gib(free)}/{gib(total)} GiB) on startup is less than desired "
            f"GPU memory utilization ({utilization}, {gib(budget)} GiB). Decrease GPU memory utilization or reduce "
            "GPU memory used by other processes.",
            engine=True,
        )
    available = int(budget - need)
    if available <= 0:
        raise StartupError(f"ValueError: No available memory for the cache blocks. {MEMORY_HINT} {DOCS}", engine=True)
    if device == "cuda":
        log("INFO", f"Available KV cache memory: {gib(available)} GiB", "gpu_worker.py:796", engine=True)
    else:
        log(
            "INFO",
            f"Auto set ({gib(available)}/{gib(total)}) GiB for KV cache on node 0, with {gib(budget)} GiB "
            f"requested memory for the worker. {gib(need)} GiB memory was consumed by non-kv usages.",
            "cpu_worker.py:248",
            engine=True,
        )
    block = args.block_size or 16
    tokens = available // per_token // block * block
    if tokens < max_model_len:
        estimate = f"Based on the available memory, the estimated maximum model length is {tokens}. " if tokens else ""
        raise StartupError(
            f"ValueError: To serve at least one request with the model's max seq len ({max_model_len}), "
            f"({gib(max_model_len * per_token)} GiB KV cache is needed, which is larger than the available KV cache "
            f"memory ({gib(available)} GiB). {estimate}{MEMORY_HINT} Decreasing `max_model_len` also reduces what is "
            f"needed. {DOCS}",
            engine=True,
        )
    log(
        "INFO",
        f"{'GPU' if device == 'cuda' else device.upper()} KV cache size: {tokens:,} tokens, Maximum "
        f"concurrency for {max_model_len:,} tokens per request: {tokens / max_model_len:.2f}x",
        "kv_cache_utils.py:1169",
        engine=True,
    )
    return tokens

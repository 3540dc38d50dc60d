"""A vLLM-compatible model server for machines without vLLM: laptops, CI, CPU hosts.

    python -m workers.jobs.vllm_serve [serve] <model> [--host H] [--port P] [--served-model-name N ...]
        [--api-key K] [--dtype D] [--max-model-len N] [--gpu-memory-utilization F] [--max-num-seqs N]
        [--enable-lora --lora-modules name=path ...] [...]

It takes `vllm serve`'s own command line for the pinned release (workers/jobs/flags/vllm.json through
vllm_flags.py), with or without the leading `serve`, so an entrypoint named `vllm` hands its arguments over
unchanged: flags as vLLM's parser takes them (underscores or dashes, short forms, `--no-`/`--disable-` negatives,
`--model` instead of the positional model). It acts on the flags in ACTED_ON; any other flag of the table is
accepted and named in a warning when given; a flag vLLM does not have is refused as vLLM's argparse refuses it
(`usage: vllm serve [model_tag] [options]`, then `vllm serve: error: unrecognized arguments: ...`, exit 2).
VLLM_API_KEY is read as vLLM reads it (when --api-key is absent). The model loads with transformers
(serve_model.py, shared with serve.py), runs on the shared batching engine (serve_engine.py) and answers vLLM's
OpenAI-compatible routes (vllm_serve_api.py). Memory: on a GPU it reserves gpu_memory_utilization of the device's
total memory, as vLLM does; on a CPU that share of the host memory that is free (vLLM takes it of the total).

Log lines have vLLM 0.34's shape, `(APIServer pid=N) INFO mm-dd HH:MM:SS [file.py:line] message`, with the file and
line where vLLM logs the same message, and the engine's as `(EngineCore pid=N)`, in vLLM's order: vLLM's logo
(`version <release>`, `model <model>`; with VLLM_DISABLE_LOG_LOGO=1 `vLLM server version <release>, serving model
<model>`), a warning that this is not vLLM, `non-default args: {...}` (the API key as ***), `Resolved
architecture: ...`, `Using max model len N`, `Initializing a V1 LLM engine (v<release>) with config: ...`,
`Loading model from scratch...`, `Loading weights took S seconds`, `Model loading took G GiB memory and S seconds`,
`Available KV cache memory: G GiB` (GPU) or `Auto set (K/T) GiB for KV cache on node 0, ...` (CPU), `GPU KV cache
size: N tokens, Maximum concurrency for L tokens per request: X.XXx` (`CPU KV cache size` on a CPU), `init engine
(profile, create kv cache, warmup model) took S s`, `Supported tasks: ['generate']`, `Loaded new LoRA adapter: name
'<name>', path '<path>'`, `Starting vLLM server on http://host:port`, `Available routes are:` with a `Route: <path>,
Methods: <methods>` line each, then uvicorn's own `INFO:     Started server process [pid]`, `INFO:     Waiting for
application startup.`, `INFO:     Application startup complete.` and its access lines. While requests run, every
10 s: `Engine 000: Avg prompt throughput: ... tokens/s, ..., GPU KV cache usage: P%`. On SIGTERM: `[shutdown] API
server: shutdown triggered`, `[shutdown] API server: stopping engine client mode=abort timeout=0s`, `[shutdown] API
server: engine client stopped`, uvicorn's shutdown lines; exit 0.

A start that cannot go on exits 1 after vLLM's lines for it. The API server's own failures end a Python traceback
with: `pydantic_core._pydantic_core.ValidationError: 1 validation error for ModelConfig` and `  Value error, Invalid
repository ID or local directory specified: '<model>'.` (not a directory, no config.json: its requirements follow),
or `  Value error, User-specified max_model_len (N) is greater than the derived max_model_len ...`; `... 1
validation error for CacheConfig` (gpu_memory_utilization outside (0, 1]); `OSError: [Errno 98] Address already in
use` (the port is taken before the model loads, as vLLM does); `ValueError: Loading lora <name> failed: No adapter
found for <path>`, `ValueError: LoRA rank R is greater than max_lora_rank M.`, `ValueError: LoRA is not enabled.
Use --enable-lora to enable LoRA.` (adapters are checked before the model loads, where vLLM finds these after).
The engine's failures print `EngineCore failed to start.` and the cause's traceback at ERROR from `(EngineCore
pid=N)`, then the API server's traceback ending `RuntimeError: Engine core initialization failed. See root cause
above. Failed core proc(s): {'EngineCore': 1}`; the causes: `RuntimeError: Cannot find any model weights with
`<model>``; `torch.OutOfMemoryError: CUDA out of memory. Tried to allocate ...` (GPU) or `RuntimeError: [enforce fail
at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate N bytes.` (CPU) when the
weights do not fit in free memory; `ValueError: Free memory on device cuda:0 (F/T GiB) on startup is less than
desired GPU memory utilization (U, R GiB). ...` (GPU); `ValueError: No available memory for the cache blocks. Try
increasing `gpu_memory_utilization` ...` (the weights fill the reservation); `ValueError: To serve at least one
request with the model's max seq len (N), (X GiB KV cache is needed, which is larger than the available KV cache
memory (Y GiB). Based on the available memory, the estimated maximum model length is E. ...`.
Runs in the ML environment; imports nothing from Django.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
import traceback
from datetime import datetime
from pathlib import Path

from workers.jobs import serve_model
from workers.jobs.serve_model import GIB, Adapter, LoadError
from workers.jobs.vllm_flags import FLAGS, RELEASE, SHORT

# What this server acts on; every other flag of the table is accepted and named in a warning when given.
ACTED_ON = frozenset(
    {
        "model", "served_model_name", "host", "port", "api_key", "dtype", "max_model_len", "gpu_memory_utilization",
        "max_num_seqs", "max_num_batched_tokens", "enable_lora", "lora_modules", "max_lora_rank", "max_loras",
        "trust_remote_code", "tokenizer", "revision", "download_dir", "tensor_parallel_size", "quantization",
        "block_size", "uvicorn_log_level", "disable_uvicorn_access_log", "disable_log_stats", "max_logprobs",
        "generation_config", "chat_template", "seed", "shutdown_timeout",
    }
)  # fmt: skip
DTYPES = {"auto": None, "half": "float16", "float16": "float16", "bfloat16": "bfloat16", "float": "float32",
          "float32": "float32"}  # fmt: skip
BANNER = (
    "llmdeploy development server (vllm_serve.py): transformers on {device}, speaking vLLM's OpenAI-compatible "
    "API. This is not vLLM; use vLLM images for production."
)
LOGO = (
    "\n       \u2588     \u2588     \u2588\u2584   \u2584\u2588\n"
    " \u2584\u2584 \u2584\u2588 \u2588     \u2588     \u2588 \u2580\u2584\u2580 \u2588  version {version}\n"
    "  \u2588\u2584\u2588\u2580 \u2588     \u2588     \u2588     \u2588  model   {model}\n"
    "   \u2580\u2580  \u2580\u2580\u2580\u2580\u2580 \u2580\u2580\u2580\u2580\u2580 \u2580     \u2580\n"
)
MEMORY_HINT = (
    "Try increasing `gpu_memory_utilization` when initializing the engine (this flag also controls CPU memory "
    "reservation on the CPU backend, despite its name)."
)
DOCS = "See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."
DEFAULT_UTILIZATION = 0.92  # vLLM's when the KV cache is not extensible
PID = os.getpid()
STATS_SECONDS = 10.0


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


def _validation_error(config: str, message: str, model: str) -> StartupError:
    """What pydantic says of a config's __post_init__ failing (vLLM's configs are pydantic dataclasses)."""
    return StartupError(
        f"pydantic_core._pydantic_core.ValidationError: 1 validation error for {config}",
        f"  Value error, {message} [type=value_error, input_value=ArgsKwargs((), {{'model': '{model}', ...}}), "
        "input_type=ArgsKwargs]",
        "    For further information visit https://errors.pydantic.dev/2.12/v/value_error",
    )


# -- arguments ---------------------------------------------------------------------------------------------------
HUMAN = re.compile(r"^(-?\d+(?:\.\d+)?)([kKmMgG]?)$")


def human_int(value: str) -> int:
    """vLLM's human-readable integers: 1k = 1000, 1K = 1024, likewise m/M and g/G."""
    match = HUMAN.match(str(value).strip())
    if not match:
        raise argparse.ArgumentTypeError(f"invalid int value: '{value}'")
    number, unit = match.groups()
    scale = {"": 1, "k": 10**3, "K": 2**10, "m": 10**6, "M": 2**20, "g": 10**9, "G": 2**30}[unit]
    return int(float(number) * scale)


TYPES = {"int": human_int, "float": float}


def _switch_default(value: str | None) -> bool | None:
    return None if value is None else value.strip().lower() == "true"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vllm serve", usage="vllm serve [model_tag] [options]")
    parser.add_argument("model_tag", nargs="?", default=None)
    for flag in FLAGS:
        names = [flag.name, *flag.aliases] + [short for short, long in SHORT.items() if long == flag.name]
        if flag.kind == "bool":
            default = _switch_default(flag.default)
            parser.add_argument(*names, dest=flag.dest, action="store_const", const=True, default=default)
            if flag.negative:
                parser.add_argument(*flag.negative, dest=flag.dest, action="store_const", const=False)
            continue
        kwargs = {"dest": flag.dest, "default": flag.default, "type": TYPES.get(flag.type)}
        if flag.choices and flag.checked == "parser":
            kwargs["choices"] = [TYPES.get(flag.type, str)(choice) for choice in flag.choices]
        if flag.kind == "list":
            kwargs["nargs"] = "+"
        elif flag.kind == "repeat":
            kwargs["action"] = "append"
        parser.add_argument(*names, **kwargs)
    return parser


def _dashes(argv: list[str]) -> list[str]:
    """vLLM's parser takes `--max_model_len` for `--max-model-len` (the name, up to `=` or a `.`)."""
    return [re.sub(r"(?<=^--)[^.=]*", lambda m: m.group(0).replace("_", "-"), arg) for arg in argv]


def parse(argv: list[str]) -> argparse.Namespace:
    if argv[:1] == ["serve"]:  # `vllm serve ...` through the shim, or only the arguments after it
        argv = argv[1:]
    args = build_parser().parse_args(_dashes(argv))
    args.model = args.model_tag or args.model
    return args


def _non_default(args: argparse.Namespace) -> dict:
    """vLLM's "non-default args" line: what differs from the parser's defaults, the API key as ***."""
    defaults = vars(build_parser().parse_args([]))
    shown = {
        key: ("***" if key in ("api_key", "hf_token") else value)
        for key, value in vars(args).items()
        if key in defaults and defaults[key] != value
    }
    if "model_tag" in shown and "model" not in shown:
        shown["model"] = args.model
    return shown


def _lora_modules(values: list[str] | None) -> list:
    """--lora-modules as vLLM's LoRAParserAction reads it: `name=path` or a JSON object per entry."""
    from workers.jobs.vllm_serve_api import LoraModule

    modules = []
    for item in values or []:
        if not item:
            continue
        if "=" in item and "," not in item:
            name, path = item.split("=", 1)
            modules.append(LoraModule(name, path))
            continue
        try:
            fields = json.loads(item)
            modules.append(LoraModule(fields.pop("name"), fields.pop("path"), fields.pop("base_model_name", None)))
        except ValueError:
            build_parser().error(f"Invalid JSON format for --lora-modules: {item}")
        except (KeyError, TypeError, AttributeError) as exc:
            build_parser().error(f"Invalid fields for --lora-modules: {item} - {exc}")
    return modules


def _ignored(args: argparse.Namespace) -> None:
    defaults = vars(build_parser().parse_args([]))
    for flag in FLAGS:
        if flag.dest not in ACTED_ON and getattr(args, flag.dest) != defaults[flag.dest]:
            log(
                "WARNING",
                f"vllm_serve.py ignores {flag.name}: it has no effect on this development server",
                "vllm_serve.py:1",
            )


# -- startup checks ------------------------------------------------------------------------------------------------
def _check(args: argparse.Namespace) -> None:
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
        raise _validation_error(
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


def _resolve(args: argparse.Namespace) -> Path:
    try:
        return serve_model.resolve_model_dir(args.model, args.revision, args.download_dir)
    except LoadError as exc:
        if exc.reason in ("not_found", "not_a_model", "bad_config"):
            raise _validation_error(
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


def _adapters(args: argparse.Namespace, loras: list) -> list[tuple[Adapter, Path]]:
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


def _max_model_len(args: argparse.Namespace, config) -> int:
    derived = serve_model.context_limit(config)
    if args.max_model_len in (None, -1):
        return derived
    if args.max_model_len > derived and os.environ.get("VLLM_ALLOW_LONG_MAX_MODEL_LEN", "0") in ("0", "false"):
        raise _validation_error(
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


def _dtype(args: argparse.Namespace, device: str, named: str) -> str:
    chosen = DTYPES.get(args.dtype or "auto")
    if chosen:
        return chosen
    if device == "cpu":
        return "float32"  # bfloat16 matmuls are slow on most CPUs
    return named if named in ("float16", "bfloat16") else "bfloat16"


def gib(value: float) -> str:
    """vLLM's format_gib: GiB rounded to two places, as Python prints the float."""
    return f"{round(value / GIB, 2)}"


def _kv_capacity(args, device: str, need: int, per_token: int, max_model_len: int) -> int:
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


# -- startup -------------------------------------------------------------------------------------------------------
def _bind(args: argparse.Namespace):
    """The socket, bound before the engine starts (vLLM does it to avoid races); it listens once serving."""
    host = args.host or ""
    try:
        sock = serve_model.bind(host, args.port, listen=False)
    except LoadError as exc:
        raise StartupError(f"OSError: {exc.message}") from exc
    part = f"[{host}]" if ":" in host else host or "0.0.0.0"  # noqa: S104 - vLLM's words for all interfaces
    return sock, f"http://{part}:{sock.getsockname()[1]}"


def _load(args: argparse.Namespace, model_dir: Path, device: str, named_dtype: str):
    dtype = _dtype(args, device, named_dtype)
    runner = "model_runner.py:412" if device == "cuda" else "standalone_model_runner.py:238"
    log("INFO", "Loading model from scratch...", runner, engine=True)
    started = time.monotonic()
    tokenizer_dir = Path(args.tokenizer) if args.tokenizer and Path(args.tokenizer).is_dir() else None
    try:
        model, tokenizer = serve_model.load_model(
            model_dir,
            device,
            dtype,
            trust_remote_code=bool(args.trust_remote_code),
            tokenizer_dir=tokenizer_dir,
            note=lambda message: log("INFO", message, "cpu_worker.py:120", engine=True),
        )
    except LoadError as exc:
        raise StartupError(exc.message, engine=True) from exc
    seconds = time.monotonic() - started
    log("INFO", f"Loading weights took {seconds:.2f} seconds", "default_loader.py:544", engine=True)
    size = serve_model.parameter_count(model_dir) * serve_model.DTYPE_BYTES[dtype]
    loaded = "model_runner.py:442" if device == "cuda" else "standalone_model_runner.py:254"
    log("INFO", f"Model loading took {gib(size)} GiB memory and {seconds:.6f} seconds", loaded, engine=True)
    if args.chat_template:
        template = Path(args.chat_template)
        tokenizer.chat_template = template.read_text() if template.is_file() else args.chat_template
    return model, tokenizer, dtype


def _sampling_defaults(args: argparse.Namespace, model_dir: Path) -> dict:
    """--generation-config auto: the model's generation_config.json overrides vLLM's sampling defaults."""
    if args.generation_config == "vllm":
        return {}
    folder = Path(args.generation_config) if args.generation_config not in (None, "auto") else model_dir
    try:
        config = json.loads((folder / "generation_config.json").read_text())
    except (OSError, ValueError):
        return {}
    # What differs from transformers' GenerationConfig defaults, as vLLM's get_diff_sampling_param reads it.
    defaults = {"temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0}
    found = {key: config[key] for key in defaults if key in config and config[key] != defaults[key]}
    if "max_new_tokens" in config:
        found["max_tokens"] = config["max_new_tokens"]
    if found:
        log(
            "WARNING",
            "Default vLLM sampling parameters have been overridden by the model's "
            f"`generation_config.json`: `{found}`. If this is not intended, please relaunch vLLM instance with "
            "`--generation-config vllm`.",
            "model.py:1508",
        )
    return found


def _stats(engine, metrics, device: str, stop: threading.Event) -> None:
    """vLLM's periodic engine line, while there is traffic (at debug, so not at all, when idle)."""
    last = (metrics.total("vllm:prompt_tokens"), metrics.total("vllm:generation_tokens"))
    busy_before = False
    while not stop.wait(STATS_SECONDS):
        now = (metrics.total("vllm:prompt_tokens"), metrics.total("vllm:generation_tokens"))
        prompt, generation = ((a - b) / STATS_SECONDS for a, b in zip(now, last, strict=True))
        busy = bool(prompt or generation)
        if busy or busy_before:
            usage = engine.tokens_in_use() / engine.max_batch_total_tokens * 100
            log(
                "INFO",
                f"Engine 000: Avg prompt throughput: {prompt:.1f} tokens/s, Avg generation throughput: "
                f"{generation:.1f} tokens/s, Running: {engine.batch_size} reqs, Waiting: {engine.queue_size} reqs, "
                f"{'GPU' if device == 'cuda' else device.upper()} KV cache usage: {usage:.1f}%",
                "loggers.py:335",
            )
        last, busy_before = now, busy


def _server(config, shutdown_timeout: int):
    base = serve_model.server_class()

    class Server(base):
        def handle_exit(self, sig, frame) -> None:
            if not self.should_exit:
                log("INFO", "[shutdown] API server: shutdown triggered", "launcher.py:255")
                mode = "abort" if shutdown_timeout == 0 else "drain"
                log(
                    "INFO",
                    f"[shutdown] API server: stopping engine client mode={mode} timeout={shutdown_timeout}s",
                    "launcher.py:264",
                )
            super().handle_exit(sig, frame)

    return Server(config)


def serve(args: argparse.Namespace) -> int:
    # Imported here: argument errors are reported in a fraction of a second, before torch loads.
    import torch
    import uvicorn

    from workers.jobs.serve_engine import Engine
    from workers.jobs.serve_metrics import VllmMetrics
    from workers.jobs.vllm_serve_api import ServedModels, VllmApp

    if os.environ.get("VLLM_DISABLE_LOG_LOGO", "0") not in ("0", "false", "False"):
        log("INFO", f"vLLM server version {RELEASE}, serving model {args.model}", "launcher.py:368")
    else:
        log("INFO", LOGO.format(version=RELEASE, model=args.model), "launcher.py:368")
    requested = os.environ.get("SERVE_DEVICE") or None
    log(
        "WARNING",
        BANNER.format(device=requested or ("cuda" if torch.cuda.is_available() else "cpu")),
        "vllm_serve.py:1",
    )
    log("INFO", f"non-default args: {_non_default(args)}", "startup.py:96")
    _check(args)
    _ignored(args)
    loras = _lora_modules(args.lora_modules)
    sock, address = _bind(args)
    started = time.monotonic()
    model_dir = _resolve(args)
    try:
        config, named_dtype = serve_model.read_config(model_dir, trust_remote_code=bool(args.trust_remote_code))
    except LoadError as exc:
        raise _validation_error("ModelConfig", exc.message, args.model) from exc
    log("INFO", f"Resolved architecture: {(getattr(config, 'architectures', None) or ['unknown'])[0]}", "model.py:761")
    max_model_len = _max_model_len(args, config)
    log("INFO", f"Using max model len {max_model_len}", "model.py:2214")
    adapters = _adapters(args, loras)
    try:
        device = serve_model.pick_device(requested)
    except LoadError as exc:
        raise StartupError(f"RuntimeError: {exc.message}", engine=True) from exc
    served = list(args.served_model_name or []) or [args.model]
    log(
        "INFO",
        f"Initializing a V1 LLM engine (v{RELEASE}) with config: model='{args.model}', "
        f"tokenizer='{args.tokenizer or args.model}', dtype={args.dtype}, max_seq_len={max_model_len}, "
        f"tensor_parallel_size={args.tensor_parallel_size}, device_config={device}, seed={args.seed}, "
        f"served_model_name={served[0]}, enable_prefix_caching=False",
        "core.py:154",
        engine=True,
    )
    model, tokenizer, dtype = _load(args, model_dir, device, named_dtype)
    try:
        model, adapter_names = serve_model.load_adapters(model, adapters, device)
    except LoadError as exc:
        raise StartupError(f"ValueError: {exc.message.split(': ', 1)[-1]}") from exc
    need = serve_model.parameter_count(model_dir) * serve_model.DTYPE_BYTES[dtype]
    capacity = _kv_capacity(args, device, need, serve_model.kv_bytes_per_token(config, dtype), max_model_len)
    try:
        serve_model.warm_up(model, tokenizer, device, min(args.max_num_batched_tokens or 2048, max_model_len))
    except LoadError as exc:
        raise StartupError(exc.message, engine=True) from exc
    log(
        "INFO",
        f"init engine (profile, create kv cache, warmup model) took {time.monotonic() - started:.2f} s",
        "core.py:459",
        engine=True,
    )
    block = args.block_size or 16
    metrics = VllmMetrics(
        model_name=served[0],
        max_model_len=max_model_len,
        cache_info={
            "block_size": str(block),
            "cache_dtype": "auto",
            "enable_prefix_caching": "False",
            "gpu_memory_utilization": str(args.gpu_memory_utilization or DEFAULT_UTILIZATION),
            "num_gpu_blocks": str(capacity // block),
        },
        max_loras=args.max_loras if args.enable_lora else None,
    )
    engine = Engine(
        model,
        tokenizer,
        torch.device(device),
        max_batch_size=args.max_num_seqs or 256,
        max_batch_total_tokens=capacity,
        on_error=lambda message: log("ERROR", message, "core.py:1180", engine=True),
        metrics=metrics,
        adapters={lora.name: adapter_names[lora.name] for lora in loras},
    )
    log("INFO", "Supported tasks: ['generate']", "entry.py:135")
    for lora in loras:
        log("INFO", f"Loaded new LoRA adapter: name '{lora.name}', path '{lora.path}'", "serving.py:229")
    api_keys = args.api_key or ([os.environ["VLLM_API_KEY"]] if os.environ.get("VLLM_API_KEY") else [])
    app = VllmApp(
        engine,
        tokenizer,
        metrics,
        ServedModels(served, args.model, max_model_len, loras),
        version=RELEASE,
        api_keys=api_keys,
        adapters={lora.name: lora.name for lora in loras},
        max_logprobs=args.max_logprobs,
        defaults=_sampling_defaults(args, model_dir),
    )
    engine.start()
    log("INFO", f"Starting vLLM server on {address}", "entry.py:139")
    log("INFO", "Available routes are:", "launcher.py:188")
    for route in app.routes():
        log("INFO", f"Route: {route.path}, Methods: {', '.join(sorted(route.methods or ()))}", "launcher.py:197")
    stop = threading.Event()
    if not args.disable_log_stats:
        threading.Thread(target=_stats, args=(engine, metrics, device, stop), daemon=True, name="vllm-stats").start()
    sock.listen(2048)
    server = _server(
        uvicorn.Config(
            app.app(),
            log_level=args.uvicorn_log_level,
            access_log=not args.disable_uvicorn_access_log,
            lifespan="on",
            http="h11",
            timeout_keep_alive=5,
            timeout_graceful_shutdown=max(args.shutdown_timeout, 1),
        ),
        args.shutdown_timeout,
    )
    server.run(sockets=[sock])
    stop.set()
    engine.stop()
    log("INFO", "[shutdown] API server: engine client stopped", "launcher.py:272")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        return serve(args)
    except StartupError as exc:
        exc.report()
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""A TGI-compatible model server for machines without TGI: laptops, CI, CPU hosts.

    python -m workers.jobs.serve --model-id DIR [--port 3000] [--hostname 0.0.0.0] [--dtype D]
        [--max-input-tokens N] [--max-total-tokens N] [--max-concurrent-requests N] [--device cpu|cuda]
        [--lora-adapters ID=DIR,...]

It takes text-generation-launcher's own flags, environment variables and defaults (workers/jobs/tgi_flags.py),
so a container entrypoint named `text-generation-launcher` can hand its arguments over unchanged and the
console builds one command line for both. It loads the directory with transformers, prints TGI's startup
lines (download check, shard ready, warm-up, "Connected") so one log parser serves both, binds the port
only when the model is ready (as TGI), and serves TGI's HTTP API (serve_api.py) with continuous batching
(serve_engine.py). LoRA adapters named by --lora-adapters are loaded onto the model with peft; a request picks
one with `adapter_id` (or `model` on the OpenAI routes), as with TGI. It refuses to start, with a clear message
and TGI's exit lines, when the directory is not a model, an adapter cannot be loaded or memory is insufficient.
Runs in the ML environment; imports nothing from Django.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import socket
import struct
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from workers.jobs.tgi_flags import FLAGS, SHORT

# Flags serve.py accepts for compatibility but does not act on (TGI-only machinery).
IGNORED = (
    "speculate",
    "kv_cache_dtype",
    "cuda_graphs",
    "rope_scaling",
    "rope_factor",
    "watermark_gamma",
    "watermark_delta",
    "ngrok",
    "otlp_endpoint",
    "weights_cache_override",
    "enable_prefill_logprobs",
    "max_batch_total_tokens",
)
DTYPES = ("float16", "bfloat16", "float32")  # float32 is serve.py's own addition, for CPUs
GIB = 1024**3


class StartupError(Exception):
    """Ends the launch: `lines` are logged at ERROR, then `Error: <kind>` as TGI's launcher prints it."""

    def __init__(self, kind: str, *lines: str, span: str = "", detail: str = "") -> None:
        super().__init__(lines[0] if lines else detail or kind)
        self.kind, self.lines, self.span = kind, lines, span
        # The launcher's last line: `Error: Kind` or, for argument errors, `Error: Kind("message")`.
        self.final = f'Error: {kind}("{detail}")' if detail else f"Error: {kind}"


# -- logging: TGI's line shape (the console's diagnosis reads it), this program's own names -----------------
_JSON = False
TARGET = "llmdeploy_serve"  # where TGI would say text_generation_launcher or text_generation_router*
BANNER = (
    "llmdeploy development server (serve.py): transformers on {device}, speaking TGI's HTTP protocol. "
    "This is not Text Generation Inference; use TGI or vLLM images for production."
)


def log(level: str, message: str, *, target: str = TARGET, span: str = "", **fields) -> None:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if _JSON:
        print(
            json.dumps(
                {
                    "timestamp": now,
                    "level": level,
                    "fields": {"message": message, **fields},
                    "target": target,
                    **({"span": {"name": span}} if span else {}),
                }
            ),
            flush=True,
        )
        return
    extra = "".join(f" {key}={value}" for key, value in fields.items())
    prefix = f"{span}: " if span else ""
    print(f"{now} {level:>5} {prefix}{target}: {message}{extra}", flush=True)


# -- arguments ---------------------------------------------------------------------------------------------
def _env_bool(value: str | None) -> bool:
    return (value or "false").strip().lower() == "true"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="text-generation-launcher (serve.py)", description=__doc__.split("\n")[0])
    for flag in FLAGS:
        env = os.environ.get(flag.env) if flag.env else None
        names = [flag.name] + [short for short, long in SHORT.items() if long == flag.name]
        if flag.kind == "bool":
            parser.add_argument(
                *names, dest=flag.dest, action="store_true", default=_env_bool(env if env is not None else flag.default)
            )
        elif flag.kind == "repeat":
            parser.add_argument(*names, dest=flag.dest, action="append", default=[env] if env else None)
        else:
            parser.add_argument(
                *names, dest=flag.dest, default=env if env is not None else flag.default, choices=flag.choices or None
            )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default=os.environ.get("SERVE_DEVICE"),
        help="serve.py only: where the model runs (default: cuda when available, else cpu)",
    )
    return parser


def _int(value: str | None) -> int | None:
    return None if value in (None, "") else int(value)


def _args_dump(args: argparse.Namespace) -> str:
    shown = {k: ('"<redacted>"' if k == "api_key" and v else json.dumps(v)) for k, v in vars(args).items()}
    return "Args {\n" + "".join(f"    {k}: {v},\n" for k, v in shown.items()) + "}"


def _hostname(value: str) -> str:
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        # As TGI: a HOSTNAME leaked from the environment (a container id) is not an address.
        log("WARN", "Invalid hostname, defaulting to 0.0.0.0", target=f"{TARGET}::api")
        return "0.0.0.0"  # noqa: S104 - TGI's behaviour; the console binds the published port to loopback


# -- the model directory and memory ---------------------------------------------------------------------------
def resolve_model_dir(model_id: str, revision: str | None, cache_dir: str | None) -> Path:
    log("INFO", f"Starting check and download process for {model_id}", span="download")
    path = Path(model_id)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
        except Exception as exc:
            raise StartupError(
                "DownloadError",
                f"Download encountered an error: {type(exc).__name__}: {exc}",
                f"serve.py loads local files only: {model_id} is neither a directory nor in the Hub cache "
                "(download the model into the model store first).",
                span="download",
            ) from exc
    if not (path / "config.json").is_file():
        raise StartupError(
            "DownloadError",
            f"Download encountered an error: {path} is not a model directory: config.json is missing",
            span="download",
        )
    try:
        json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise StartupError(
            "DownloadError",
            f"Download encountered an error: {path}/config.json is not valid JSON: {exc}",
            span="download",
        ) from exc
    if not list(path.glob("*.safetensors")):
        raise StartupError(
            "DownloadError", f"No local weights found in {path} with extension .safetensors", span="download"
        )
    log("INFO", "Files are already present on the host. Skipping download.", span="download")
    log("INFO", f"Successfully downloaded weights for {model_id}", span="download")
    return path


def parameter_count(model_dir: Path) -> int:
    """Parameters from the safetensors headers alone (8-byte length, then JSON), without loading weights."""
    total = 0
    for file in model_dir.glob("*.safetensors"):
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        for name, entry in header.items():
            if name != "__metadata__":
                count = 1
                for dim in entry["shape"]:
                    count *= dim
                total += count
    return total


def available_memory(device: str, fraction: float) -> int:
    """Bytes this server may use: free GPU memory, or the host's (within a container's cgroup limit)."""
    if device == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info()
        return int(free * fraction)
    import psutil

    available = psutil.virtual_memory().available
    limit = Path("/sys/fs/cgroup/memory.max")
    if limit.is_file() and limit.read_text().strip() != "max":
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        available = min(available, int(limit.read_text()) - used)
    return int(available * fraction)


# -- LoRA adapters ----------------------------------------------------------------------------------------------
# TGI's syntax (server/text_generation_server/utils/adapter.py): `id`, `id@revision` or `id=path`, comma-separated.
ADAPTER_SYNTAX = re.compile(r"^([^=@]+)(?:=([^@]+))?(?:@(.+))?$")


@dataclass(frozen=True)
class Adapter:
    id: str  # what requests name: `adapter_id`, or `model` on the OpenAI routes
    path: str | None  # a local directory (`id=path`); without one, `id` is a Hub repository in the cache
    revision: str | None = None


def parse_lora_adapters(value: str | None) -> list[Adapter]:
    """--lora-adapters (or LORA_ADAPTERS) as TGI reads it; a malformed entry is the launcher's argument error."""
    if not value:
        return []
    adapters: list[Adapter] = []
    for item in value.split(","):
        item = item.strip()
        match = ADAPTER_SYNTAX.match(item) if item.count("=") <= 1 and item.count("@") <= 1 else None
        if not match:
            raise StartupError("ArgumentValidation", detail=f"Invalid LoRA adapter format: {item}")
        adapter = Adapter(*match.groups())
        if any(adapter.id == seen.id for seen in adapters):
            raise StartupError("ArgumentValidation", detail=f"LoRA adapter {adapter.id} is given twice")
        adapters.append(adapter)
    return adapters


def _adapter_failed(adapter: Adapter, message: str) -> StartupError:
    # TGI loads adapters in the shard, after the model: a bad one ends the start as a shard that cannot start.
    return StartupError(
        "ShardCannotStart",
        "Error when initializing model",
        f"{message} (LoRA adapter '{adapter.id}')",
        "Shard 0 failed to start",
        span="shard-manager",
    )


def resolve_adapter_dir(adapter: Adapter, cache_dir: str | None) -> Path:
    """The adapter's directory: its path, or its Hub id from the cache (TGI's launcher downloads those first)."""
    if adapter.path is not None:
        return Path(adapter.path)
    log("INFO", f"Starting check and download process for {adapter.id}", span="download")
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(adapter.id, revision=adapter.revision, cache_dir=cache_dir, local_files_only=True)
    except Exception as exc:
        raise StartupError(
            "DownloadError",
            f"Download encountered an error: {type(exc).__name__}: {exc}",
            f"serve.py loads local files only: LoRA adapter {adapter.id} is neither a directory nor in the Hub "
            "cache (give it as name=/path/to/adapter in the model store).",
            span="download",
        ) from exc
    log("INFO", f"Successfully downloaded weights for {adapter.id}", span="download")
    return Path(path)


def check_adapter_dir(adapter: Adapter, path: Path) -> None:
    """What can be told from the files, before the model loads (TGI finds these only after loading it)."""
    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise _adapter_failed(adapter, f"ValueError: Can't find 'adapter_config.json' at '{path}'")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise _adapter_failed(adapter, f"ValueError: {config_file} is not valid JSON: {exc}") from exc
    kind = config.get("peft_type") if isinstance(config, dict) else None
    if kind != "LORA":
        raise _adapter_failed(adapter, f"ValueError: {config_file} describes a {kind} adapter; only LoRA is served")
    if config.get("use_dora"):
        # peft cannot mix DoRA adapters with other rows in one batch (TGI has no DoRA either).
        raise _adapter_failed(adapter, "ValueError: DoRA adapters cannot be served; merge it into the model instead")
    if not list(path.glob("*.safetensors")):
        raise _adapter_failed(
            adapter,
            f"FileNotFoundError: No adapter weights found for adapter '{adapter.id}' "
            f"and revision '{adapter.revision}'.",
        )


def load_adapters(model, adapters: list[tuple[Adapter, Path]], device: str):
    """Load every adapter onto the model with peft. Returns the model (a PeftModel when there are adapters) and
    each adapter id's peft name: ids may hold '.' and '/', which peft's module names cannot."""
    if not adapters:
        return model, {}
    from peft import PeftModel

    log("WARN", "LoRA adapters enabled (experimental feature).")
    names: dict[str, str] = {}
    for index, (adapter, path) in enumerate(adapters, start=1):
        name = f"adapter{index}"
        log("INFO", f"Loading adapter weights into model: {adapter.id}", span="shard-manager")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if names:
                    missing = model.load_adapter(path, adapter_name=name, torch_device=device).missing_keys
                else:
                    model = PeftModel.from_pretrained(model, path, adapter_name=name, torch_device=device)
                    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
        except (ValueError, KeyError, OSError, RuntimeError, TypeError) as exc:
            raise _adapter_failed(adapter, f"{type(exc).__name__}: {exc}") from exc
        if missing:
            # peft would serve the adapter with those weights left at their initial values: not the adapter.
            raise _adapter_failed(adapter, f"ValueError: {path} lacks weights the adapter's config names: {missing}")
        names[adapter.id] = name
    return model.eval(), names


# -- startup -------------------------------------------------------------------------------------------------------
def _check_arguments(args: argparse.Namespace) -> None:
    if args.max_input_tokens and args.max_input_length:
        raise StartupError(
            "ArgumentValidation", detail="`max_input_tokens` and `max_input_length` are the same setting: set only one"
        )
    args.max_input_tokens = _int(args.max_input_tokens) or _int(args.max_input_length)
    args.max_total_tokens = _int(args.max_total_tokens)
    if args.max_input_tokens and args.max_total_tokens and args.max_input_tokens >= args.max_total_tokens:
        raise StartupError(
            "ArgumentValidation",
            detail=f"`max_input_tokens`({args.max_input_tokens}) must be < `max_total_tokens`({args.max_total_tokens})",
        )
    shards = _int(args.num_shard) or 1
    if shards > 1 or args.sharded == "true":
        # The console placed (and reserved) several GPUs; this development server still runs one whole copy.
        log(
            "WARN",
            f"serve.py does not shard: --num-shard {shards} is accepted for the placement, and the model runs "
            "whole on one device (use TGI on a GPU host for tensor parallelism)",
        )
    if args.quantize:
        raise StartupError(
            "ArgumentValidation",
            detail=f"serve.py cannot apply --quantize {args.quantize}: "
            "run TGI on a GPU host for quantized serving, or serve the unquantized checkpoint",
        )
    if args.dtype and args.dtype not in DTYPES:
        raise StartupError("ArgumentValidation", detail=f"--dtype must be one of {', '.join(DTYPES)}")
    args.lora_adapters = parse_lora_adapters(args.lora_adapters)
    for name in IGNORED:
        value = getattr(args, name, None)
        if value not in (None, False, [], "", "false"):
            log("WARN", f"serve.py ignores --{name.replace('_', '-')} (a TGI-only option)")


def _pick_device(requested: str | None) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise StartupError(
            "ShardCannotStart",
            "Found no NVIDIA driver on your system (--device cuda requested, torch.cuda.is_available() is false)",
            span="shard-manager",
        )
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def load(args: argparse.Namespace, model_dir: Path, device: str):
    """Check memory, load the model and tokenizer, and return them with the dtype name used."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars are not log lines

    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=args.trust_remote_code)
    config_dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "").replace(
        "torch.", ""
    )
    dtype = args.dtype or (
        "float32" if device == "cpu" else config_dtype if config_dtype in ("float16", "bfloat16") else "bfloat16"
    )
    params = parameter_count(model_dir)
    need = params * {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]
    fraction = float(args.cuda_memory_fraction)
    have = available_memory(device, fraction)
    if need * 1.1 > have:
        raise StartupError(
            "ShardCannotStart",
            f"Not enough memory to load the model: {params / 1e6:.1f}M parameters need {need / GIB:.2f} GiB in {dtype} "
            f"and {have / GIB:.2f} GiB is available on {device} (memory fraction {fraction:g}). Use a smaller dtype, "
            "a quantized checkpoint, or a host with more memory.",
            "Shard 0 failed to start",
            span="shard-manager",
        )
    log("INFO", f"Loading {params / 1e6:.1f}M parameters from {model_dir} on {device} in {dtype}", span="shard-manager")
    if device == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
        # Leave one core to the HTTP side and tokenization: a busy core stalls every parallel matmul of the
        # step (the other threads wait for it), which costs more than the thread gives.
        threads = max(1, len(os.sched_getaffinity(0)) - 1)
        torch.set_num_threads(threads)
        log("INFO", f"Using {threads} CPU thread(s) for the model (OMP_NUM_THREADS overrides)", span="shard-manager")
    if device == "cuda" and fraction < 1.0:
        torch.cuda.set_per_process_memory_fraction(fraction)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=getattr(torch, dtype), trust_remote_code=args.trust_remote_code
        )
        model = model.to(device).eval()
        tokenizer_dir = Path(args.tokenizer_config_path).parent if args.tokenizer_config_path else model_dir
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=args.trust_remote_code)
    except torch.OutOfMemoryError as exc:
        raise StartupError(
            "ShardCannotStart",
            "Shard complete standard error output:",
            f"torch.OutOfMemoryError: {exc}",
            "Shard 0 failed to start",
            span="shard-manager",
        ) from exc
    except (ValueError, KeyError, OSError) as exc:
        raise StartupError(
            "ShardCannotStart",
            "Error when initializing model",
            f"{type(exc).__name__}: {exc}",
            "Shard 0 failed to start",
            span="shard-manager",
        ) from exc
    return model, tokenizer, dtype, config


def kv_bytes_per_token(config, dtype: str) -> int:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * {"float32": 4, "float16": 2, "bfloat16": 2}[dtype]


def warm_up(model, tokenizer, device: str, prefill_tokens: int) -> None:
    import torch

    log("INFO", "Warming up model", target=f"{TARGET}::engine")
    tokens = torch.full((1, max(prefill_tokens, 2)), tokenizer.bos_token_id or 0, dtype=torch.long, device=device)
    try:
        with torch.no_grad():
            model(input_ids=tokens, use_cache=False, logits_to_keep=1)
    except torch.OutOfMemoryError as exc:
        message = (
            f"Not enough memory to handle {prefill_tokens} prefill tokens. You need to decrease "
            "`--max-batch-prefill-tokens`"
        )
        raise StartupError(
            "WebserverFailed",
            f"Server error: {message}",
            f'Error: Backend(Warmup(Generation("{message}")))',
            "Webserver Crashed",
        ) from exc


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP. Without it
    # an event written after the response headers waits for the caller's delayed ACK, about 40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise StartupError(
            "WebserverFailed",
            f"Failed to bind to {host}:{port}: Address already in use"
            if exc.errno == 98
            else f"Failed to bind to {host}:{port}: {exc}",
            "Webserver Crashed",
        ) from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # TGI exits 0 after a signal-initiated shutdown; uvicorn would re-raise the signal afterwards.
            self.force_exit = self.should_exit
            self.should_exit = True

    return Server


def serve(args: argparse.Namespace) -> int:
    # Imported here: argument errors are reported in a fraction of a second, before torch loads.
    import torch
    import uvicorn

    from workers.jobs.serve_api import Limits, ServeApp
    from workers.jobs.serve_engine import Engine
    from workers.jobs.serve_metrics import Metrics

    started = time.monotonic()
    log("INFO", _args_dump(args))
    _check_arguments(args)
    host, port = _hostname(args.hostname), int(args.port)
    model_dir = resolve_model_dir(args.model_id, args.revision, args.huggingface_hub_cache)
    adapters = [(a, resolve_adapter_dir(a, args.huggingface_hub_cache)) for a in args.lora_adapters]
    log("INFO", "Starting shard rank=0", span="shard-manager")
    for adapter, path in adapters:
        check_adapter_dir(adapter, path)  # before the model loads: a wrong path fails in seconds, not minutes
    device = _pick_device(args.device)
    log("INFO", BANNER.format(device=device))
    model, tokenizer, dtype, config = load(args, model_dir, device)
    model, adapter_names = load_adapters(model, adapters, device)
    log("INFO", f"Shard ready in {time.monotonic() - started:.1f}s rank=0", span="shard-manager")

    log("INFO", "Starting Webserver")
    limit = min(
        getattr(config, "max_position_embeddings", 4096) or 4096,
        tokenizer.model_max_length if tokenizer.model_max_length < 10**9 else 10**9,
    )
    prefill = _int(args.max_batch_prefill_tokens) or min(4096, limit)
    warm_up(model, tokenizer, device, min(prefill, args.max_input_tokens or prefill))
    per_token = kv_bytes_per_token(config, dtype)
    free = available_memory(device, float(args.cuda_memory_fraction)) * 0.9
    capacity = max(int(free // per_token), 1)
    log("INFO", f"KV-cache blocks: {capacity}, size: 1", target=TARGET)
    log("INFO", f"Setting max batch total tokens to {capacity}", target=f"{TARGET}::engine")
    if args.max_total_tokens and args.max_total_tokens > capacity:
        message = f"Not enough memory to handle `max_total_tokens={args.max_total_tokens}`"
        raise StartupError(
            "WebserverFailed", message, f"Error: Backend(NotEnoughMemory({args.max_total_tokens}))", "Webserver Crashed"
        )
    if not args.max_total_tokens:
        args.max_total_tokens = min(capacity, limit)
        log("INFO", f"Maximum total tokens defaulted to {args.max_total_tokens}", target=f"{TARGET}::api")
    if not args.max_input_tokens:
        args.max_input_tokens = args.max_total_tokens - 1
        log("INFO", f"Maximum input tokens defaulted to {args.max_input_tokens}", target=f"{TARGET}::api")

    metrics = Metrics(max_input_tokens=args.max_input_tokens, max_total_tokens=args.max_total_tokens)
    limits = Limits(
        max_concurrent_requests=int(args.max_concurrent_requests),
        max_best_of=int(args.max_best_of),
        max_stop_sequences=int(args.max_stop_sequences),
        max_top_n_tokens=int(args.max_top_n_tokens),
        max_input_tokens=args.max_input_tokens,
        max_total_tokens=args.max_total_tokens,
        validation_workers=int(args.validation_workers),
        max_client_batch_size=int(args.max_client_batch_size),
        payload_limit=int(args.payload_limit),
    )
    batch_size = _int(args.max_batch_size) or limits.max_concurrent_requests
    api: ServeApp | None = None

    def unhealthy(message: str) -> None:
        log("ERROR", message, target=f"{TARGET}::engine")
        if api is not None:
            api.healthy = False

    engine = Engine(
        model,
        tokenizer,
        torch.device(device),
        max_batch_size=batch_size,
        max_batch_total_tokens=max(capacity, limits.max_total_tokens),
        on_error=unhealthy,
        metrics=metrics,
        adapters=adapter_names,
    )
    compute_type = f"1-{torch.cuda.get_device_name().lower().replace(' ', '-')}" if device == "cuda" else "cpu"
    api = ServeApp(
        engine,
        tokenizer,
        metrics,
        limits,
        model_id=args.model_id,
        api_key=args.api_key,
        compute_type=compute_type,
        adapters=frozenset(adapter_names),
        warn=lambda message: log("WARN", message, target=f"{TARGET}::api"),
    )
    engine.start()
    sock = _bind(host, port)
    log("INFO", "Connected", target=f"{TARGET}::api")
    log("INFO", f"Serving on http://{host}:{port}", target=f"{TARGET}::api")
    config = uvicorn.Config(
        api.app(),
        log_level="warning",
        access_log=False,
        lifespan="off",
        http="h11",
        timeout_graceful_shutdown=int(args.graceful_termination_timeout),
    )
    server = _server_class()(config)
    server.run(sockets=[sock])
    log("INFO", "signal received, starting graceful shutdown", target=f"{TARGET}::api")
    log("INFO", "Terminating webserver")
    engine.stop()
    log("INFO", "webserver terminated")
    return 0


def main(argv: list[str] | None = None) -> int:
    global _JSON
    args = build_parser().parse_args(argv)
    _JSON = args.json_output
    if args.env:
        print(
            json.dumps(
                {
                    "python": sys.version.split()[0],
                    "executable": sys.executable,
                    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                }
            )
        )
        return 0
    try:
        return serve(args)
    except StartupError as exc:
        for line in exc.lines:
            log("ERROR", line, span=exc.span)
        print(exc.final, file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())

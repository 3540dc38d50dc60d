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
Loading itself is serve_model.py, shared with the vLLM flavour (vllm_serve.py); this module prints its steps and
failures as TGI does.
Runs in the ML environment; imports nothing from Django.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from workers.jobs import serve_model
from workers.jobs.serve_model import GIB, Adapter, LoadError
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
# The one --quantize serve.py takes: it names a compressed-tensors checkpoint's own format, which it loads anyway.
COMPRESSED_TENSORS = "compressed-tensors"


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


# -- the model directory (serve_model.py finds and checks it; this prints TGI's lines) --------------------------
def resolve_model_dir(model_id: str, revision: str | None, cache_dir: str | None) -> Path:
    log("INFO", f"Starting check and download process for {model_id}", span="download")
    try:
        path = serve_model.resolve_model_dir(model_id, revision, cache_dir)
    except LoadError as exc:
        if exc.reason == "not_found":
            raise StartupError(
                "DownloadError",
                f"Download encountered an error: {exc.error}",
                f"serve.py loads local files only: {model_id} is neither a directory nor in the Hub cache "
                "(download the model into the model store first).",
                span="download",
            ) from exc
        if exc.reason == "no_weights":
            raise StartupError("DownloadError", exc.message, span="download") from exc
        raise StartupError("DownloadError", f"Download encountered an error: {exc.message}", span="download") from exc
    log("INFO", "Files are already present on the host. Skipping download.", span="download")
    log("INFO", f"Successfully downloaded weights for {model_id}", span="download")
    return path


# -- LoRA adapters ----------------------------------------------------------------------------------------------
# TGI's syntax (server/text_generation_server/utils/adapter.py): `id`, `id@revision` or `id=path`, comma-separated.
ADAPTER_SYNTAX = re.compile(r"^([^=@]+)(?:=([^@]+))?(?:@(.+))?$")


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


def _adapter_failed(exc: LoadError) -> StartupError:
    # TGI loads adapters in the shard, after the model: a bad one ends the start as a shard that cannot start.
    return StartupError(
        "ShardCannotStart",
        "Error when initializing model",
        f"{exc.message} (LoRA adapter '{exc.facts['adapter']}')",
        "Shard 0 failed to start",
        span="shard-manager",
    )


def resolve_adapter_dir(adapter: Adapter, cache_dir: str | None) -> Path:
    """The adapter's directory: its path, or its Hub id from the cache (TGI's launcher downloads those first)."""
    if adapter.path is not None:
        return Path(adapter.path)
    log("INFO", f"Starting check and download process for {adapter.id}", span="download")
    try:
        path = serve_model.resolve_adapter_dir(adapter, cache_dir)
    except LoadError as exc:
        raise StartupError(
            "DownloadError",
            f"Download encountered an error: {exc.error}",
            f"serve.py loads local files only: LoRA adapter {adapter.id} is neither a directory nor in the Hub "
            "cache (give it as name=/path/to/adapter in the model store).",
            span="download",
        ) from exc
    log("INFO", f"Successfully downloaded weights for {adapter.id}", span="download")
    return path


def load_adapters(model, adapters: list[tuple[Adapter, Path]], device: str):
    if adapters:
        log("WARN", "LoRA adapters enabled (experimental feature).")
    try:
        return serve_model.load_adapters(
            model,
            adapters,
            device,
            loading=lambda a: log("INFO", f"Loading adapter weights into model: {a.id}", span="shard-manager"),
        )
    except LoadError as exc:
        raise _adapter_failed(exc) from exc


# -- startup -------------------------------------------------------------------------------------------------------
def _refuse_quantize(quantize: str) -> None:
    raise StartupError(
        "ArgumentValidation",
        detail=f"serve.py cannot apply --quantize {quantize}: "
        "run TGI on a GPU host for quantized serving, or serve the unquantized checkpoint",
    )


def check_quantize(quantize: str | None, model_dir: Path) -> None:
    """TGI's --quantize compressed-tensors names the checkpoint's own format: taken for such a checkpoint only."""
    config = json.loads((model_dir / "config.json").read_text())
    if quantize and (quantize != COMPRESSED_TENSORS or serve_model.compressed_tensors_format(config) is None):
        _refuse_quantize(quantize)


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
    if args.quantize and args.quantize != COMPRESSED_TENSORS:
        _refuse_quantize(args.quantize)
    if args.dtype and args.dtype not in DTYPES:
        raise StartupError("ArgumentValidation", detail=f"--dtype must be one of {', '.join(DTYPES)}")
    args.lora_adapters = parse_lora_adapters(args.lora_adapters)
    for name in IGNORED:
        value = getattr(args, name, None)
        if value not in (None, False, [], "", "false"):
            log("WARN", f"serve.py ignores --{name.replace('_', '-')} (a TGI-only option)")


def _pick_device(requested: str | None) -> str:
    try:
        return serve_model.pick_device(requested)
    except LoadError as exc:
        raise StartupError("ShardCannotStart", exc.message, span="shard-manager") from exc


def _shard_failed(exc: LoadError) -> StartupError:
    if exc.reason == "oom":
        lines = ("Shard complete standard error output:", exc.message)
    else:
        lines = ("Error when initializing model", exc.message)
    return StartupError("ShardCannotStart", *lines, "Shard 0 failed to start", span="shard-manager")


def load(args: argparse.Namespace, model_dir: Path, device: str):
    """Check memory, load the model and tokenizer, and return them with the dtype name used."""
    try:
        config, config_dtype = serve_model.read_config(model_dir, trust_remote_code=args.trust_remote_code)
    except LoadError as exc:
        raise _shard_failed(exc) from exc
    dtype = args.dtype or (
        "float32" if device == "cpu" else config_dtype if config_dtype in ("float16", "bfloat16") else "bfloat16"
    )
    params = serve_model.parameter_count(model_dir)
    need = params * serve_model.DTYPE_BYTES[dtype]
    fraction = float(args.cuda_memory_fraction)
    have = serve_model.available_memory(device, fraction)
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
    try:
        model, tokenizer = serve_model.load_model(
            model_dir,
            device,
            dtype,
            trust_remote_code=args.trust_remote_code,
            tokenizer_dir=Path(args.tokenizer_config_path).parent if args.tokenizer_config_path else None,
            memory_fraction=fraction,
            note=lambda message: log("INFO", message, span="shard-manager"),
        )
    except LoadError as exc:
        raise _shard_failed(exc) from exc
    return model, tokenizer, dtype, config


def warm_up(model, tokenizer, device: str, prefill_tokens: int) -> None:
    log("INFO", "Warming up model", target=f"{TARGET}::engine")
    try:
        serve_model.warm_up(model, tokenizer, device, prefill_tokens)
    except LoadError as exc:
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
    try:
        return serve_model.bind(host, port)
    except LoadError as exc:
        raise StartupError(
            "WebserverFailed",
            f"Failed to bind to {host}:{port}: Address already in use"
            if exc.facts["errno"] == 98
            else f"Failed to bind to {host}:{port}: {exc.message}",
            "Webserver Crashed",
        ) from exc


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
    check_quantize(args.quantize, model_dir)
    adapters = [(a, resolve_adapter_dir(a, args.huggingface_hub_cache)) for a in args.lora_adapters]
    log("INFO", "Starting shard rank=0", span="shard-manager")
    for adapter, path in adapters:
        try:  # before the model loads: a wrong path fails in seconds, not minutes
            serve_model.adapter_config(adapter, path)
        except LoadError as exc:
            raise _adapter_failed(exc) from exc
    device = _pick_device(args.device)
    log("INFO", BANNER.format(device=device))
    model, tokenizer, dtype, config = load(args, model_dir, device)
    model, adapter_names = load_adapters(model, adapters, device)
    log("INFO", f"Shard ready in {time.monotonic() - started:.1f}s rank=0", span="shard-manager")

    log("INFO", "Starting Webserver")
    limit = serve_model.context_limit(config, tokenizer)
    prefill = _int(args.max_batch_prefill_tokens) or min(4096, limit)
    warm_up(model, tokenizer, device, min(prefill, args.max_input_tokens or prefill))
    per_token = serve_model.kv_bytes_per_token(config, dtype)
    free = serve_model.available_memory(device, float(args.cuda_memory_fraction)) * 0.9
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
    server = serve_model.server_class()(config)
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

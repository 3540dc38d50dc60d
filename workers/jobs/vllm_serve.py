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
OpenAI-compatible routes (vllm_serve_api.py, vllm_serve_requests.py). The command line is vllm_serve_args.py, the
log lines and refusals vllm_serve_checks.py. Memory: on a GPU it reserves gpu_memory_utilization of the device's
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
import logging
import os
import sys
import threading
import time
from pathlib import Path

from workers.jobs import serve_model
from workers.jobs.serve_model import LoadError
from workers.jobs.vllm_flags import RELEASE
from workers.jobs.vllm_serve_args import ignored, lora_modules, non_default, parse
from workers.jobs.vllm_serve_checks import (
    DEFAULT_UTILIZATION,
    StartupError,
    check,
    check_adapters,
    gib,
    kv_capacity,
    log,
    max_model_len_of,
    resolve,
    validation_error,
)

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
STATS_SECONDS = 10.0


def _dtype(args: argparse.Namespace, device: str, named: str) -> str:
    chosen = DTYPES.get(args.dtype or "auto")
    if chosen:
        return chosen
    if device == "cpu":
        return "float32"  # bfloat16 matmuls are slow on most CPUs
    return named if named in ("float16", "bfloat16") else "bfloat16"


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


def _quiet_routes(paths: str | None) -> None:
    """--disable-access-log-for-endpoints: no uvicorn access line for those paths (as vLLM's log filter)."""
    quiet = {path.strip() for path in (paths or "").split(",") if path.strip()}
    if quiet:
        # uvicorn's access record: (client, method, path with query, HTTP version, status)
        logging.getLogger("uvicorn.access").addFilter(
            lambda record: len(record.args or ()) < 3 or str(record.args[2]).split("?")[0] not in quiet
        )


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
    requested = os.environ.get("SERVE_DEVICE") or os.environ.get("VLLM_TARGET_DEVICE") or None
    requested = requested if requested in ("cpu", "cuda") else None
    log(
        "WARNING",
        BANNER.format(device=requested or ("cuda" if torch.cuda.is_available() else "cpu")),
        "vllm_serve.py:1",
    )
    log("INFO", f"non-default args: {non_default(args)}", "startup.py:96")
    check(args)
    ignored(args)
    loras = lora_modules(args.lora_modules)
    sock, address = _bind(args)
    started = time.monotonic()
    model_dir = resolve(args)
    try:
        config, named_dtype = serve_model.read_config(model_dir, trust_remote_code=bool(args.trust_remote_code))
    except LoadError as exc:
        raise validation_error("ModelConfig", exc.message, args.model) from exc
    log("INFO", f"Resolved architecture: {(getattr(config, 'architectures', None) or ['unknown'])[0]}", "model.py:761")
    max_model_len = max_model_len_of(args, config)
    log("INFO", f"Using max model len {max_model_len}", "model.py:2214")
    adapters = check_adapters(args, loras)
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
    capacity = kv_capacity(args, device, need, serve_model.kv_bytes_per_token(config, dtype), max_model_len)
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
    _quiet_routes(args.disable_access_log_for_endpoints)  # after uvicorn.Config has set its loggers up
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

# ruff: noqa: E501  (log lines are kept verbatim, at their real length)
"""Real TGI launch logs, one constant per case, in the formats TGI 3.3 prints (router and launcher log lines, failure messages).

Text-mode launcher lines carry a timestamp, level, span and target; a shard's Python stderr comes as one block after
`Shard complete standard error output:` and ends with the span field ` rank=N`; the final `Error: X` lines have no
prefix. JSON constants use `--json-output` (launcher: fields.message; router: flattened message). ESC marks ANSI.
"""

from __future__ import annotations

import json

ESC = "\x1b"

HEALTHY_STARTUP = """\
2024-12-11T18:25:40.104221Z  INFO text_generation_launcher: Args {
    model_id: "meta-llama/Llama-3.1-8B-Instruct",
    revision: None,
    validation_workers: 2,
    sharded: None,
    num_shard: Some(
        1,
    ),
    quantize: None,
    speculate: None,
    dtype: None,
    kv_cache_dtype: None,
    trust_remote_code: false,
    max_concurrent_requests: 128,
    max_input_tokens: None,
    max_total_tokens: None,
    max_batch_prefill_tokens: None,
    cuda_graphs: None,
    hostname: "0.0.0.0",
    port: 80,
    prometheus_port: 9000,
    shard_uds_path: "/tmp/text-generation-server",
    master_addr: "localhost",
    master_port: 29500,
    huggingface_hub_cache: None,
    disable_custom_kernels: false,
    cuda_memory_fraction: 1.0,
    json_output: false,
    api_key: None,
    usage_stats: Off,
}
2024-12-11T18:25:40.517302Z  INFO text_generation_launcher: Using attention flashinfer - Prefix caching true
2024-12-11T18:25:40.517330Z  WARN text_generation_launcher: Not enough VRAM to run the model: Available: 75.1GB - Model 16.1GB.
2024-12-11T18:25:40.517338Z  WARN text_generation_launcher: Reducing the max batch prefill from 8192 to 4096 because there is not enough VRAM to support it.
2024-12-11T18:25:40.517341Z  INFO text_generation_launcher: Default `max_batch_prefill_tokens` to 4096
2024-12-11T18:25:40.517345Z  INFO text_generation_launcher: Using default cuda graphs [1, 2, 4, 8, 16, 32]
2024-12-11T18:25:40.517466Z  INFO download: text_generation_launcher: Starting check and download process for meta-llama/Llama-3.1-8B-Instruct
2024-12-11T18:25:43.902110Z  INFO text_generation_launcher: Files are already present on the host. Skipping download.
2024-12-11T18:25:44.425519Z  INFO download: text_generation_launcher: Successfully downloaded weights for meta-llama/Llama-3.1-8B-Instruct
2024-12-11T18:25:44.425785Z  INFO shard-manager: text_generation_launcher: Starting shard rank=0
2024-12-11T18:25:47.604212Z  INFO text_generation_launcher: Detected system cuda
2024-12-11T18:25:49.210440Z  INFO text_generation_launcher: Using prefix caching = True
2024-12-11T18:25:49.210476Z  INFO text_generation_launcher: Using Attention = flashinfer
2024-12-11T18:25:54.437312Z  INFO shard-manager: text_generation_launcher: Waiting for shard to be ready... rank=0
2024-12-11T18:25:56.839110Z  INFO text_generation_launcher: Server started at unix:///tmp/text-generation-server-0
2024-12-11T18:25:56.840312Z  INFO shard-manager: text_generation_launcher: Shard ready in 12.4s rank=0
2024-12-11T18:25:56.931072Z  INFO text_generation_launcher: Starting Webserver
2024-12-11T18:25:56.998210Z  INFO text_generation_router_v3: backends/v3/src/lib.rs:125: Warming up model
2024-12-11T18:25:58.412002Z  INFO text_generation_launcher: KV-cache blocks: 470112, size: 1
2024-12-11T18:25:58.439131Z  INFO text_generation_launcher: Cuda Graphs are enabled for sizes [32, 16, 8, 4, 2, 1]
2024-12-11T18:26:01.207682Z  INFO text_generation_router_v3: backends/v3/src/lib.rs:137: Setting max batch total tokens to 470112
2024-12-11T18:26:01.207706Z  INFO text_generation_router_v3: backends/v3/src/lib.rs:166: Using backend V3
2024-12-11T18:26:01.207712Z  INFO text_generation_router::server: router/src/server.rs:1897: Maximum input tokens defaulted to 131071
2024-12-11T18:26:01.207716Z  INFO text_generation_router::server: router/src/server.rs:1898: Maximum total tokens defaulted to 131072
2024-12-11T18:26:03.011204Z  INFO text_generation_router::server: router/src/server.rs:2397: Connected
"""

CUDA_OOM_LOADING = """\
2024-12-11T18:26:14.885100Z  INFO shard-manager: text_generation_launcher: Starting shard rank=0
2024-12-11T18:26:24.893112Z  INFO shard-manager: text_generation_launcher: Waiting for shard to be ready... rank=0
2024-12-11T18:26:34.901520Z  INFO shard-manager: text_generation_launcher: Waiting for shard to be ready... rank=0
2024-12-11T18:26:35.911822Z ERROR text_generation_launcher: Error when initializing model
Traceback (most recent call last):
  File "/opt/conda/bin/text-generation-server", line 8, in <module>
    sys.exit(app())
  File "/usr/src/server/text_generation_server/server.py", line 268, in serve_inner
    model = get_model_with_lora_adapters(
  File "/usr/src/server/text_generation_server/layers/linear.py", line 44, in __init__
    self.weight = weight.to(device)
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.14 GiB of which 1.20 GiB is free.
2024-12-11T18:26:36.207682Z ERROR shard-manager: text_generation_launcher: Shard complete standard error output:

/opt/conda/lib/python3.11/site-packages/text_generation_server/utils/import_utils.py:12: UserWarning: ipex not found
Traceback (most recent call last):

  File "/opt/conda/bin/text-generation-server", line 8, in <module>
    sys.exit(app())

  File "/usr/src/server/text_generation_server/cli.py", line 119, in serve
    server.serve(

  File "/usr/src/server/text_generation_server/models/flash_causal_lm.py", line 1195, in __init__
    model = model_class(prefix, config, weights)

  File "/usr/src/server/text_generation_server/layers/linear.py", line 44, in __init__
    self.weight = weight.to(device)

torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.14 GiB of which 1.20 GiB is free. Process 31337 has 77.93 GiB memory in use. Of the allocated memory 76.50 GiB is allocated by PyTorch, and 845.00 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables) rank=0
2024-12-11T18:26:36.303431Z ERROR text_generation_launcher: Shard 0 failed to start
2024-12-11T18:26:36.303457Z  INFO text_generation_launcher: Shutting down shards
Error: ShardCannotStart
"""

# The warm-up chain: the Python traceback (a CUDA OOM turned into "Not enough memory ... prefill tokens"), the
# router's ERROR line and exit reason (ANSI-coloured, as the router prints by default), then the launcher's.
_ROUTER_WARMUP = (
    f"{ESC}[2m2024-12-11T18:27:01.413102Z{ESC}[0m {ESC}[31mERROR{ESC}[0m {ESC}[1mwarmup{ESC}[0m{ESC}[1m{{{ESC}[0m"
    f"max_input_length=Some(4095) max_prefill_tokens=4096 max_total_tokens=Some(4096) max_batch_size=None"
    f"{ESC}[1m}}{ESC}[0m{ESC}[2m:{ESC}[0m{ESC}[1mwarmup{ESC}[0m{ESC}[2m:{ESC}[0m "
    f"{ESC}[2mtext_generation_router_v3::client{ESC}[0m{ESC}[2m:{ESC}[0m "
    f"{ESC}[2mbackends/v3/src/client/mod.rs{ESC}[0m{ESC}[2m:{ESC}[0m{ESC}[2m54:{ESC}[0m "
    "Server error: Not enough memory to handle 4096 prefill tokens. You need to decrease `--max-batch-prefill-tokens`"
)
WARMUP_OOM = f"""\
2024-12-11T18:26:58.117306Z  INFO text_generation_launcher: Starting Webserver
2024-12-11T18:26:58.201733Z  INFO text_generation_router_v3: backends/v3/src/lib.rs:125: Warming up model
2024-12-11T18:27:01.410021Z ERROR text_generation_launcher: Method Warmup encountered an error.
Traceback (most recent call last):
  File "/usr/src/server/text_generation_server/models/flash_causal_lm.py", line 1585, in warmup
    _, _batch, _ = self.generate_token(batch)
  File "/usr/src/server/text_generation_server/layers/attention/kv_cache.py", line 101, in __init__
    torch.empty(
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.96 GiB. GPU 0 has a total capacity of 79.14 GiB of which 1.06 GiB is free.

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "/opt/conda/bin/text-generation-server", line 8, in <module>
    sys.exit(app())
  File "/usr/src/server/text_generation_server/interceptor.py", line 24, in intercept
    return await response
  File "/usr/src/server/text_generation_server/models/flash_causal_lm.py", line 1590, in warmup
    raise RuntimeError(
RuntimeError: Not enough memory to handle 4096 prefill tokens. You need to decrease `--max-batch-prefill-tokens`
{_ROUTER_WARMUP}
Error: Backend(Warmup(Generation("Not enough memory to handle 4096 prefill tokens. You need to decrease `--max-batch-prefill-tokens`")))
2024-12-11T18:27:01.533441Z ERROR text_generation_launcher: Webserver Crashed
2024-12-11T18:27:01.533470Z  INFO text_generation_launcher: Shutting down shards
2024-12-11T18:27:02.204530Z  INFO shard-manager: text_generation_launcher: shard terminated rank=0
Error: WebserverFailed
"""

KV_CAPACITY = f"""\
2024-12-11T18:30:12.001002Z  INFO text_generation_router_v3: backends/v3/src/lib.rs:125: Warming up model
2024-12-11T18:30:14.512002Z  INFO text_generation_launcher: KV-cache blocks: 20480, size: 1
2024-12-11T18:30:15.100117Z  INFO text_generation_router_v3: backends/v3/src/lib.rs:137: Setting max batch total tokens to 20480
Error: Backend(NotEnoughMemory(32768))
{ESC}[2m2024-12-11T18:30:15.200431Z{ESC}[0m {ESC}[31mERROR{ESC}[0m {ESC}[2mtext_generation_launcher{ESC}[0m{ESC}[2m:{ESC}[0m Webserver Crashed
Error: WebserverFailed
"""

KV_CAPACITY_DISPLAY = "Not enough memory to handle `max_total_tokens=32768`"

SHM = """\
2024-12-11T18:31:02.412110Z  INFO shard-manager: text_generation_launcher: Starting shard rank=1
2024-12-11T18:31:22.600811Z  WARN text_generation_launcher: NCCL WARN Error while creating shared memory segment /dev/shm/nccl-3Cb3FZ (size 9637888)
2024-12-11T18:31:23.015412Z ERROR shard-manager: text_generation_launcher: Shard process was signaled to shutdown with signal 7 rank=1
2024-12-11T18:31:23.108812Z ERROR text_generation_launcher: Shard 1 failed to start
Error: ShardCannotStart
"""

HOST_OOM_KILL = """\
2024-12-11T18:32:40.302110Z  INFO shard-manager: text_generation_launcher: Waiting for shard to be ready... rank=0
2024-12-11T18:32:44.915412Z ERROR shard-manager: text_generation_launcher: Shard process was signaled to shutdown with signal 9 rank=0
2024-12-11T18:32:45.008812Z ERROR text_generation_launcher: Shard 0 failed to start
Error: ShardCannotStart
"""

GATED = """\
2024-12-11T18:33:01.517466Z  INFO download: text_generation_launcher: Starting check and download process for meta-llama/Llama-3.1-8B-Instruct
2024-12-11T18:33:04.201183Z ERROR download: text_generation_launcher: Download encountered an error:
Traceback (most recent call last):
  File "/opt/conda/lib/python3.11/site-packages/huggingface_hub/utils/_http.py", line 409, in hf_raise_for_status
    response.raise_for_status()
requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json

The above exception was the direct cause of the following exception:

huggingface_hub.errors.GatedRepoError: 401 Client Error. (Request ID: Root=1-675a0a3c-1c2e6e4f5a6b7c8d9e0f1a2b;9b1c)

Cannot access gated repo for url https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json.
Access to model meta-llama/Llama-3.1-8B-Instruct is restricted. You must have access to it and be authenticated to access it. Please log in.
Error: DownloadError
"""

REPO_NOT_FOUND = """\
2024-12-11T18:34:01.517466Z  INFO download: text_generation_launcher: Starting check and download process for acme/no-such-model
2024-12-11T18:34:02.811183Z ERROR download: text_generation_launcher: Download encountered an error:
requests.exceptions.HTTPError: 401 Client Error: Unauthorized for url: https://huggingface.co/api/models/acme/no-such-model

The above exception was the direct cause of the following exception:

huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. (Request ID: Root=1-675a0a7e-4a1b2c3d4e5f6a7b8c9d0e1f;77aa)

Repository Not Found for url: https://huggingface.co/api/models/acme/no-such-model.
Please make sure you specified the correct `repo_id` and `repo_type`.
If you are trying to access a private or gated repo, make sure you are authenticated.
Error: DownloadError
"""

OFFLINE_NOT_CACHED = """\
2024-12-11T18:35:09.912110Z ERROR shard-manager: text_generation_launcher: Shard complete standard error output:

Traceback (most recent call last):
  File "/usr/src/server/text_generation_server/utils/hub.py", line 145, in weight_files
    raise LocalEntryNotFoundError(
huggingface_hub.errors.LocalEntryNotFoundError: File model-00001-of-00004.safetensors of model meta-llama/Llama-3.1-8B-Instruct not found in /data. Please run `text-generation-server download-weights meta-llama/Llama-3.1-8B-Instruct` first. rank=0
2024-12-11T18:35:10.003431Z ERROR text_generation_launcher: Shard 0 failed to start
Error: ShardCannotStart
"""

NO_LOCAL_WEIGHTS = """\
2024-12-11T18:35:40.112110Z ERROR shard-manager: text_generation_launcher: Shard complete standard error output:

Traceback (most recent call last):
  File "/usr/src/server/text_generation_server/utils/hub.py", line 115, in weight_files
    raise FileNotFoundError(
FileNotFoundError: No local weights found in /data/models/llama-8b with extension .safetensors rank=0
2024-12-11T18:35:40.203431Z ERROR text_generation_launcher: Shard 0 failed to start
Error: ShardCannotStart
"""

OFFLINE_MODE = """\
huggingface_hub.errors.OfflineModeIsEnabled: Cannot reach https://huggingface.co/api/models/acme/llm: offline mode is enabled. To disable it, please unset the `HF_HUB_OFFLINE` environment variable.
Error: DownloadError
"""

UNSUPPORTED_MODEL = """\
2024-12-11T18:36:20.611822Z ERROR text_generation_launcher: Error when initializing model
Traceback (most recent call last):
  File "/usr/src/server/text_generation_server/models/__init__.py", line 1680, in get_model
    raise ValueError(f"Unsupported model type {model_type}")
ValueError: Unsupported model type mamba2
2024-12-11T18:36:21.003431Z ERROR text_generation_launcher: Shard 0 failed to start
Error: ShardCannotStart
"""

FLASH_ATTENTION_REQUIRED = (
    "NotImplementedError: Sharded Llama requires Flash Attention enabled models.\nError: ShardCannotStart\n"
)

DTYPE_AND_QUANTIZE = (
    "RuntimeError: Only 1 can be set between `dtype` and `quantize`, as they both decide how goes the final model.\n"
)

EXL2_SHARDED = 'Error: ArgumentValidation("Sharding is currently not supported with `exl2` quantization")\n'

ARGUMENT_VALIDATION = 'Error: ArgumentValidation("`max_input_tokens`(8192) must be < `max_total_tokens`(8192)")\n'

NOT_ENOUGH_CUDA_DEVICES = 'Error: NotEnoughCUDADevices("`sharded` is true but only found 1 CUDA devices")\n'

PORT_IN_USE = f"""\
2024-12-11T18:37:03.011204Z  INFO text_generation_router::server: router/src/server.rs:2397: Connected
{ESC}[2m2024-12-11T18:37:03.011330Z{ESC}[0m {ESC}[31mERROR{ESC}[0m {ESC}[2mtext_generation_router::server{ESC}[0m{ESC}[2m:{ESC}[0m {ESC}[2mrouter/src/server.rs{ESC}[0m{ESC}[2m:{ESC}[0m{ESC}[2m2329:{ESC}[0m Failed to bind to 0.0.0.0:80: Address already in use (os error 98)
2024-12-11T18:37:03.133441Z ERROR text_generation_launcher: Webserver Crashed
Error: WebserverFailed
"""

PROMETHEUS_PORT_IN_USE = (
    'failed to build prometheus recorder: FailedToCreateHTTPListener("Address already in use (os error 98)")\n'
)

IMAGE_MISSING = (
    "Unable to find image 'ghcr.io/huggingface/text-generation-inference:9.9.9' locally\n"
    "docker: Error response from daemon: manifest for ghcr.io/huggingface/text-generation-inference:9.9.9 "
    "not found: manifest unknown: manifest unknown.\n"
)

NO_SUCH_IMAGE = (
    "docker: Error response from daemon: No such image: ghcr.io/huggingface/text-generation-inference:3.3.5.\n"
)

GPU_RUNTIME = 'docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].\n'

NVIDIA_DRIVER_TOO_OLD = (
    "RuntimeError: The NVIDIA driver on your system is too old (found version 11040). "
    "CUDA driver version is insufficient for CUDA runtime version\n"
)

NETWORK = """\
2024-12-11T18:38:01.517466Z  INFO download: text_generation_launcher: Starting check and download process for mistralai/Mistral-7B-Instruct-v0.3
2024-12-11T18:38:11.604110Z ERROR download: text_generation_launcher: (MaxRetryError("HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded with url: /mistralai/Mistral-7B-Instruct-v0.3/resolve/main/model-00001-of-00003.safetensors (Caused by NameResolutionError(\\"<urllib3.connection.HTTPSConnection object at 0x7f2b>: Failed to resolve 'huggingface.co' ([Errno -3] Temporary failure in name resolution)\\"))"), '(Request ID: 1c5e)')
2024-12-11T18:38:11.604141Z  INFO download: text_generation_launcher: Retrying in 5 seconds
2024-12-11T18:38:16.609220Z  INFO download: text_generation_launcher: Retry 1/4
2024-12-11T18:38:36.711220Z  INFO download: text_generation_launcher: Retry 4/4
2024-12-11T18:38:46.811183Z ERROR download: text_generation_launcher: Download encountered an error:
requests.exceptions.ConnectionError: (MaxRetryError("HTTPSConnectionPool(host='huggingface.co', port=443): Max retries exceeded"), '(Request ID: 9a0f)')
Error: DownloadError
"""

BINARY_MISSING = """\
2024-12-11T18:39:01.517466Z  INFO download: text_generation_launcher: Starting check and download process for gpt2
2024-12-11T18:39:01.517981Z ERROR download: text_generation_launcher: text-generation-server not found in PATH
2024-12-11T18:39:01.517990Z ERROR download: text_generation_launcher: Please install it with `make install-server`
Error: DownloadError
"""

SHARD_CRASHED = """\
2024-12-11T19:02:11.003311Z ERROR text_generation_launcher: Shard 0 crashed
2024-12-11T19:02:11.003350Z  INFO text_generation_launcher: Terminating webserver
2024-12-11T19:02:11.104440Z  INFO text_generation_launcher: webserver terminated
Error: ShardFailed
"""

# What the reconciler writes when it gives up waiting: TGI itself never times out (§3).
DEADLINE = """\
2024-12-11T18:40:01.425785Z  INFO shard-manager: text_generation_launcher: Starting shard rank=0
2024-12-11T18:40:11.437312Z  INFO shard-manager: text_generation_launcher: Waiting for shard to be ready... rank=0
2024-12-11T18:40:21.441312Z  INFO shard-manager: text_generation_launcher: Waiting for shard to be ready... rank=0
2024-12-11T18:55:01.000000Z ERROR console: Deadline passed while loading the shards
"""


def _launcher(level: str, message: str, **span: object) -> str:
    record = {
        "timestamp": "2024-12-11T18:26:36.207682Z",
        "level": level,
        "fields": {"message": message},
        "target": "text_generation_launcher",
        "span": {"name": "shard-manager", **span} if span else {},
        "spans": [{"name": "shard-manager", **span}] if span else [],
    }
    return json.dumps(record)


def _router(level: str, message: str, *, target: str, filename: str, line_number: int) -> str:
    record = {
        "timestamp": "2024-12-11T18:37:03.011330Z",
        "level": level,
        "message": message,
        "target": target,
        "filename": filename,
        "line_number": line_number,
        "span": {},
        "spans": [],
    }
    return json.dumps(record)


# --json-output: the stderr block arrives as one JSON line whose message holds the whole traceback.
JSON_CUDA_OOM_LOADING = "\n".join(
    [
        _launcher("INFO", "Starting shard", rank=0),
        _launcher(
            "ERROR",
            "Shard complete standard error output:\n\nTraceback (most recent call last):\n"
            '  File "/opt/conda/bin/text-generation-server", line 8, in <module>\n    sys.exit(app())\n'
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 896.00 MiB. GPU 0 has a total capacity "
            "of 23.64 GiB of which 512.00 MiB is free.",
            rank=0,
        ),
        _launcher("ERROR", "Shard 0 failed to start"),
        "Error: ShardCannotStart",
    ]
)

JSON_PORT_IN_USE = "\n".join(
    [
        _router(
            "INFO",
            "Connected",
            target="text_generation_router::server",
            filename="router/src/server.rs",
            line_number=2397,
        ),
        _router(
            "ERROR",
            "Failed to bind to 0.0.0.0:8080: Address already in use (os error 98)",
            target="text_generation_router::server",
            filename="router/src/server.rs",
            line_number=2329,
        ),
        _launcher("ERROR", "Webserver Crashed"),
        "Error: WebserverFailed",
    ]
)

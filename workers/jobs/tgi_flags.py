"""text-generation-launcher's flags as data (TGI 3.3.x, `launcher/src/main.rs`).

One table for two readers: serve.py builds its command line from it (so a container entrypoint named
`text-generation-launcher` can hand its arguments to serve.py unchanged), and the console's argument
builder is tested against it (every flag it emits must be a real launcher flag). Imports nothing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flag:
    name: str  # the long flag, e.g. "--max-total-tokens"
    env: str | None  # the variable clap also reads (flag > env > default)
    default: str | None  # TGI's default as text; None: unset (computed or off)
    kind: str = "value"  # "value", "bool" (a switch; the env var takes true/false) or "repeat"
    choices: tuple[str, ...] = ()

    @property
    def dest(self) -> str:
        return self.name.removeprefix("--").replace("-", "_")


QUANTIZE_CHOICES = (
    "awq",
    "compressed-tensors",
    "eetq",
    "exl2",
    "gptq",
    "marlin",
    "bitsandbytes",
    "bitsandbytes-nf4",
    "bitsandbytes-fp4",
    "fp8",
)

FLAGS: tuple[Flag, ...] = (
    Flag("--model-id", "MODEL_ID", "bigscience/bloom-560m"),
    Flag("--revision", "REVISION", None),
    Flag("--validation-workers", "VALIDATION_WORKERS", "2"),
    Flag("--sharded", "SHARDED", None, choices=("true", "false")),
    Flag("--num-shard", "NUM_SHARD", None),
    Flag("--quantize", "QUANTIZE", None, choices=QUANTIZE_CHOICES),
    Flag("--speculate", "SPECULATE", None),
    Flag("--dtype", "DTYPE", None, choices=("float16", "bfloat16")),
    Flag("--kv-cache-dtype", "KV_CACHE_DTYPE", None, choices=("fp8_e4m3fn", "fp8_e5m2")),
    Flag("--trust-remote-code", "TRUST_REMOTE_CODE", "false", kind="bool"),
    Flag("--max-concurrent-requests", "MAX_CONCURRENT_REQUESTS", "128"),
    Flag("--max-best-of", "MAX_BEST_OF", "2"),
    Flag("--max-stop-sequences", "MAX_STOP_SEQUENCES", "4"),
    Flag("--max-top-n-tokens", "MAX_TOP_N_TOKENS", "5"),
    Flag("--max-input-tokens", "MAX_INPUT_TOKENS", None),
    Flag("--max-input-length", "MAX_INPUT_LENGTH", None),
    Flag("--max-total-tokens", "MAX_TOTAL_TOKENS", None),
    Flag("--waiting-served-ratio", "WAITING_SERVED_RATIO", "0.3"),
    Flag("--max-batch-prefill-tokens", "MAX_BATCH_PREFILL_TOKENS", None),
    Flag("--max-batch-total-tokens", "MAX_BATCH_TOTAL_TOKENS", None),
    Flag("--max-waiting-tokens", "MAX_WAITING_TOKENS", "20"),
    Flag("--max-batch-size", "MAX_BATCH_SIZE", None),
    Flag("--cuda-graphs", "CUDA_GRAPHS", None),
    Flag("--hostname", "HOSTNAME", "0.0.0.0"),  # noqa: S104 - TGI's default; the console passes its own
    Flag("--port", "PORT", "3000"),
    Flag("--prometheus-port", "PROMETHEUS_PORT", "9000"),
    Flag("--shard-uds-path", "SHARD_UDS_PATH", "/tmp/text-generation-server"),  # noqa: S108 - TGI's default
    Flag("--master-addr", "MASTER_ADDR", "localhost"),
    Flag("--master-port", "MASTER_PORT", "29500"),
    Flag("--huggingface-hub-cache", "HUGGINGFACE_HUB_CACHE", None),
    Flag("--weights-cache-override", "WEIGHTS_CACHE_OVERRIDE", None),
    Flag("--disable-custom-kernels", "DISABLE_CUSTOM_KERNELS", "false", kind="bool"),
    Flag("--cuda-memory-fraction", "CUDA_MEMORY_FRACTION", "1.0"),
    Flag("--rope-scaling", "ROPE_SCALING", None, choices=("linear", "dynamic")),
    Flag("--rope-factor", "ROPE_FACTOR", None),
    Flag("--json-output", "JSON_OUTPUT", "false", kind="bool"),
    Flag("--otlp-endpoint", "OTLP_ENDPOINT", None),
    Flag("--otlp-service-name", "OTLP_SERVICE_NAME", "text-generation-inference.router"),
    Flag("--cors-allow-origin", "CORS_ALLOW_ORIGIN", None, kind="repeat"),
    Flag("--api-key", "API_KEY", None),
    Flag("--watermark-gamma", "WATERMARK_GAMMA", None),
    Flag("--watermark-delta", "WATERMARK_DELTA", None),
    Flag("--ngrok", "NGROK", "false", kind="bool"),
    Flag("--ngrok-authtoken", "NGROK_AUTHTOKEN", None),
    Flag("--ngrok-edge", "NGROK_EDGE", None),
    Flag("--tokenizer-config-path", "TOKENIZER_CONFIG_PATH", None),
    Flag("--disable-grammar-support", "DISABLE_GRAMMAR_SUPPORT", "false", kind="bool"),
    Flag("--env", None, "false", kind="bool"),
    Flag("--max-client-batch-size", "MAX_CLIENT_BATCH_SIZE", "4"),
    Flag("--lora-adapters", "LORA_ADAPTERS", None),
    Flag("--usage-stats", "USAGE_STATS", "on", choices=("on", "off", "no-stack")),
    Flag("--payload-limit", "PAYLOAD_LIMIT", "2000000"),
    Flag("--enable-prefill-logprobs", "ENABLE_PREFILL_LOGPROBS", "false", kind="bool"),
    Flag("--graceful-termination-timeout", "GRACEFUL_TERMINATION_TIMEOUT", "90"),
)

BY_NAME: dict[str, Flag] = {flag.name: flag for flag in FLAGS}

# Short forms the launcher also accepts.
SHORT = {"-p": "--port", "-e": "--env", "-g": "--graceful-termination-timeout"}

"""What both development servers share before they serve: the model directory, memory, loading the model and its
LoRA adapters, warm-up and the listening socket. serve.py (TGI's flavour) and vllm_serve.py (vLLM's) each print
these steps and their failures in their own server's shape: this module prints nothing and raises `LoadError`, a
reason and the facts, which each flavour turns into its server's lines. Imports nothing from Django.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

Note = Callable[[str], None]


class LoadError(Exception):
    """A start that cannot go on. `reason` names the case (not_found, not_a_model, bad_config, no_weights,
    adapter, no_device, oom, init, warmup_oom, bind), `message` the facts, `error` the underlying exception's
    `Type: message` where there is one."""

    def __init__(self, reason: str, message: str, *, error: str = "", **facts) -> None:
        super().__init__(message)
        self.reason, self.message, self.error, self.facts = reason, message, error, facts


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# -- the model directory and memory -----------------------------------------------------------------------------
def resolve_model_dir(model_id: str, revision: str | None, cache_dir: str | None) -> Path:
    """The model's directory: `model_id` itself, or a Hub id already in the cache (these servers download
    nothing), with a config.json that parses and safetensors weights."""
    path = Path(model_id)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(model_id, revision=revision, cache_dir=cache_dir, local_files_only=True))
        except Exception as exc:
            raise LoadError(
                "not_found", f"{model_id} is neither a directory nor in the Hub cache", error=_error(exc)
            ) from exc
    if not (path / "config.json").is_file():
        raise LoadError("not_a_model", f"{path} is not a model directory: config.json is missing", path=path)
    try:
        json.loads((path / "config.json").read_text())
    except ValueError as exc:
        raise LoadError(
            "bad_config", f"{path}/config.json is not valid JSON: {exc}", error=_error(exc), path=path
        ) from exc
    if not list(path.glob("*.safetensors")):
        raise LoadError("no_weights", f"No local weights found in {path} with extension .safetensors", path=path)
    return path


def parameter_count(model_dir: Path) -> int:
    """Parameters from the safetensors headers alone (8-byte length, then JSON), without loading weights. A
    compressed-tensors packed weight (`weight_packed`, several 4-bit values to an int32) counts as the dense
    weight it decompresses to: its `weight_shape`, two int64 values read from the file."""
    total = 0
    for file in model_dir.glob("*.safetensors"):
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
            packed_shapes = {}
            for name, entry in header.items():
                if name.endswith(".weight_shape") and entry.get("dtype") == "I64" and entry["shape"] == [2]:
                    handle.seek(8 + length + entry["data_offsets"][0])
                    packed_shapes[name.removesuffix("_shape") + "_packed"] = struct.unpack("<2q", handle.read(16))
        for name, entry in header.items():
            if name == "__metadata__" or name.endswith(".weight_shape"):
                continue
            count = 1
            for dim in packed_shapes.get(name, entry["shape"]):
                count *= dim
            total += count
    return total


def compressed_tensors_format(config: dict) -> str | None:
    """The compressed-tensors format of a config.json (pack-quantized, float-quantized, int-quantized, ...), or
    None when the checkpoint is not compressed-tensors (llm-compressor's output)."""
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quantization, dict) or quantization.get("quant_method") != "compressed-tensors":
        return None
    return str(quantization.get("format") or "dense")


def memory(device: str) -> tuple[int, int]:
    """(free, total) bytes: the GPU's, or the host's (within a container's cgroup limit)."""
    if device == "cuda":
        import torch

        return torch.cuda.mem_get_info()
    import psutil

    virtual = psutil.virtual_memory()
    free, total = virtual.available, virtual.total
    limit = Path("/sys/fs/cgroup/memory.max")
    if limit.is_file() and limit.read_text().strip() != "max":
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        free, total = min(free, int(limit.read_text()) - used), min(total, int(limit.read_text()))
    return free, total


def available_memory(device: str, fraction: float) -> int:
    """Bytes this server may use: a fraction of what is free on the GPU or the host."""
    return int(memory(device)[0] * fraction)


def kv_bytes_per_token(config, dtype: str) -> int:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * kv_heads * head_dim * DTYPE_BYTES[dtype]


def context_limit(config, tokenizer=None) -> int:
    """The longest sequence the model takes: its position embeddings, or the tokenizer's limit when smaller."""
    limit = getattr(config, "max_position_embeddings", None) or 4096
    if tokenizer is not None and tokenizer.model_max_length < 10**9:
        limit = min(limit, tokenizer.model_max_length)
    return limit


# -- LoRA adapters ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Adapter:
    id: str  # what requests name: TGI's `adapter_id`, or `model` on the OpenAI routes
    path: str | None  # a local directory; without one, `id` is a Hub repository in the cache
    revision: str | None = None


def resolve_adapter_dir(adapter: Adapter, cache_dir: str | None) -> Path:
    """The adapter's directory: its path, or its Hub id from the cache."""
    if adapter.path is not None:
        return Path(adapter.path)
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(adapter.id, revision=adapter.revision, cache_dir=cache_dir, local_files_only=True)
    except Exception as exc:
        raise LoadError(
            "not_found", f"LoRA adapter {adapter.id} is neither a directory nor in the Hub cache", error=_error(exc)
        ) from exc
    return Path(path)


def adapter_config(adapter: Adapter, path: Path) -> dict:
    """What can be told from the files, before the model loads: a LoRA adapter's config, with its weights."""

    def failed(message: str) -> LoadError:
        return LoadError("adapter", message, adapter=adapter.id, path=path)

    config_file = path / "adapter_config.json"
    if not config_file.is_file():
        raise failed(f"ValueError: Can't find 'adapter_config.json' at '{path}'")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise failed(f"ValueError: {config_file} is not valid JSON: {exc}") from exc
    kind = config.get("peft_type") if isinstance(config, dict) else None
    if kind != "LORA":
        raise failed(f"ValueError: {config_file} describes a {kind} adapter; only LoRA is served")
    if config.get("use_dora"):
        # peft cannot mix DoRA adapters with other rows in one batch (neither TGI nor vLLM serves DoRA).
        raise failed("ValueError: DoRA adapters cannot be served; merge it into the model instead")
    if not list(path.glob("*.safetensors")):
        raise failed(
            f"FileNotFoundError: No adapter weights found for adapter '{adapter.id}' and revision '{adapter.revision}'."
        )
    return config


def load_adapters(
    model, adapters: list[tuple[Adapter, Path]], device: str, *, loading: Callable[[Adapter], None] | None = None
):
    """Load every adapter onto the model with peft (`loading` is told before each). Returns the model (a
    PeftModel when there are adapters) and each adapter id's peft name: ids may hold '.' and '/', which peft's
    module names cannot."""
    if not adapters:
        return model, {}
    from peft import PeftModel

    names: dict[str, str] = {}
    for index, (adapter, path) in enumerate(adapters, start=1):
        name = f"adapter{index}"
        if loading:
            loading(adapter)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if names:
                    missing = model.load_adapter(path, adapter_name=name, torch_device=device).missing_keys
                else:
                    model = PeftModel.from_pretrained(model, path, adapter_name=name, torch_device=device)
                    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
        except (ValueError, KeyError, OSError, RuntimeError, TypeError) as exc:
            raise LoadError("adapter", _error(exc), adapter=adapter.id, path=path) from exc
        if missing:
            # peft would serve the adapter with those weights left at their initial values: not the adapter.
            raise LoadError(
                "adapter",
                f"ValueError: {path} lacks weights the adapter's config names: {missing}",
                adapter=adapter.id,
                path=path,
            )
        names[adapter.id] = name
    return model.eval(), names


# -- loading --------------------------------------------------------------------------------------------------------
def pick_device(requested: str | None) -> str:
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        raise LoadError(
            "no_device",
            "Found no NVIDIA driver on your system (--device cuda requested, torch.cuda.is_available() is false)",
        )
    return requested or ("cuda" if torch.cuda.is_available() else "cpu")


def read_config(model_dir: Path, *, trust_remote_code: bool):
    """The model's transformers config and the dtype it names ("" when none)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError) as exc:
        raise LoadError("init", _error(exc), error=_error(exc)) from exc
    named = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "").replace("torch.", "")
    return config, named


def load_model(
    model_dir: Path,
    device: str,
    dtype: str,
    *,
    trust_remote_code: bool,
    tokenizer_dir: Path | None = None,
    memory_fraction: float = 1.0,
    note: Note | None = None,
):
    """The model (on `device`, in eval mode) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars are not log lines
    if device == "cpu" and not os.environ.get("OMP_NUM_THREADS"):
        # Leave one core to the HTTP side and tokenization: a busy core stalls every parallel matmul of the
        # step (the other threads wait for it), which costs more than the thread gives.
        threads = max(1, len(os.sched_getaffinity(0)) - 1)
        torch.set_num_threads(threads)
        if note:
            note(f"Using {threads} CPU thread(s) for the model (OMP_NUM_THREADS overrides)")
    if device == "cuda" and memory_fraction < 1.0:
        torch.cuda.set_per_process_memory_fraction(memory_fraction)
    extra = {}
    packed = compressed_tensors_format(json.loads((model_dir / "config.json").read_text()))
    if packed is not None and device == "cpu":
        # A CPU has no kernels for int4/int8/FP8 weights: decompress them to dense `dtype` weights while loading
        # (rather than on the first forward) so the memory check and warm-up see the model as it serves.
        from transformers import CompressedTensorsConfig

        extra["quantization_config"] = CompressedTensorsConfig(dequantize=True)
        if note:
            note(f"Decompressing compressed-tensors weights ({packed}) to {dtype}: the CPU has no kernels for them")
    try:
        with warnings.catch_warnings():
            # transformers says the checkpoint's quantization_config wins: it does, `dequantize` is what is asked.
            warnings.filterwarnings("ignore", message="You passed `quantization_config`")
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, **extra
            )
        if packed is not None and device == "cpu":
            _upcast_float8(model, getattr(torch, dtype))
        model = model.to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or model_dir, trust_remote_code=trust_remote_code)
    except torch.OutOfMemoryError as exc:
        raise LoadError("oom", f"torch.OutOfMemoryError: {exc}", error=_error(exc)) from exc
    except (ValueError, KeyError, OSError) as exc:
        raise LoadError("init", _error(exc), error=_error(exc)) from exc
    return model, tokenizer


def _upcast_float8(model, dtype) -> None:
    """FP8 tensors left after decompression (scales, or weights of a layer compressed-tensors did not wrap) in
    `dtype`: CPU matmuls have no FP8 inputs."""
    import torch

    float8 = {getattr(torch, name) for name in dir(torch) if name.startswith("float8_")}
    for module in model.modules():
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if tensor.dtype in float8:
                upcast = tensor.detach().to(dtype)
                if isinstance(tensor, torch.nn.Parameter):
                    setattr(module, name, torch.nn.Parameter(upcast, requires_grad=False))
                else:
                    setattr(module, name, upcast)


def warm_up(model, tokenizer, device: str, tokens: int) -> None:
    """One forward of `tokens` prefill tokens: the largest prefill the server will run."""
    import torch

    ids = torch.full((1, max(tokens, 2)), tokenizer.bos_token_id or 0, dtype=torch.long, device=device)
    try:
        with torch.no_grad():
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
    except torch.OutOfMemoryError as exc:
        raise LoadError("warmup_oom", f"torch.OutOfMemoryError: {exc}", error=_error(exc), tokens=tokens) from exc


# -- the socket and the HTTP server --------------------------------------------------------------------------------
def bind(host: str, port: int, *, listen: bool = True) -> socket.socket:
    """The server's socket. `listen=False` binds only (vLLM takes its port before it loads the model; connections
    are refused until `sock.listen`)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say they are TCP. Without it
    # an event written after the response headers waits for the caller's delayed ACK, about 40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise LoadError("bind", str(exc), error=_error(exc), errno=exc.errno, host=host, port=port) from exc
    if listen:
        sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def server_class():
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            # Both servers exit 0 after a signal-initiated shutdown; uvicorn would re-raise the signal afterwards.
            self.force_exit = self.should_exit
            self.should_exit = True

    return Server

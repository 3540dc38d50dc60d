"""TGI's rule book: the failures TGI reports (launcher, router and shard log lines), each rule tested on real logs.

Matched in order, so a specific cause wins over a generic one in the same log: the warm-up's "Not enough memory
to handle N prefill tokens" is raised from a torch CUDA OOM, and both lines are in its traceback. Several rules may
share a cause id (the id is what metrics and the restart policy read) while each names its own next step; the ids
are vLLM's where the cause is the same thing. tests/fixtures/tgi-logs/real holds the public logs they are scored on.
"""

from __future__ import annotations

import re
from typing import Any

from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from deployments.backends import diagnosis as engine
from deployments.backends.diagnosis import Diagnosis, Rule, deadline_passed, image_missing, oom_killed, patterns

MEMORY_LEVERS = _(
    "Levers, in order of effect: quantize the weights (`--quantize bitsandbytes-nf4`, `eetq` or `fp8` quantize "
    "on load; `--quantize awq` or `gptq` need a pre-quantized checkpoint); `--kv-cache-dtype fp8_e4m3fn` "
    "(halves the KV cache); a lower `--max-total-tokens` / `--max-input-tokens`; a lower "
    "`--max-batch-prefill-tokens`; `--cuda-memory-fraction` (leaves room for other processes); more GPUs "
    "(`--num-shard`). Check with nvidia-smi that no other process holds memory on these GPUs and that "
    "CUDA_VISIBLE_DEVICES names the GPUs you meant. If much memory is reserved but unallocated, set "
    "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."
)

CPU_MEMORY_LEVERS = _(
    "On CPU the weights and the KV cache live in the host's RAM: lower `--max-total-tokens` and "
    "`--max-input-tokens`, give the server more memory (a larger memory limit, or fewer deployments on this host), "
    "or use a smaller model."
)

RULES: tuple[Rule, ...] = (
    Rule(
        cause="image_missing",
        patterns=patterns(r"No such image", r"pull access denied", r"manifest unknown", r"manifest for \S+ not found"),
        title=_("The container image is missing"),
        next_step=_(
            "Docker could not find or pull the TGI image. Check the image name and tag of the deployment, check "
            "that the host reaches the registry (`docker login` for a private one), or pull the image on the host "
            "first (`docker load` on an air-gapped host)."
        ),
        context=image_missing,
    ),
    Rule(
        cause="gpu_runtime",
        patterns=patterns(
            r'could not select device driver ".*" with capabilities: \[\[gpu\]\]',
            r"Found no NVIDIA driver",
            r"CUDA driver version is insufficient",
            r"no kernel image is available",
            r"signaled to shutdown with signal (?:4|11)\b",
            # torch's warning when the driver cannot run its CUDA; TGI then fails on whatever needs the GPU.
            r"NVIDIA driver on your system is too old",
            # TGI's own refusal when torch sees no GPU ("Sharded Llama requires CUDA.").
            r"\brequires CUDA\.?\s*$",
        ),
        title=_("The GPU driver or container runtime does not work with this image"),
        next_step=_(
            "`could not select device driver`: install the NVIDIA Container Toolkit on the host and restart "
            "Docker. `Found no NVIDIA driver` or `CUDA driver version is insufficient`: install or upgrade the "
            "host's NVIDIA driver to one that supports the image's CUDA version, or use an older TGI image. "
            "`no kernel image is available`: this GPU's architecture is not built into the image. `requires "
            "CUDA`: the container sees no GPU; check that the deployment is given GPUs (`--gpus`, "
            "CUDA_VISIBLE_DEVICES) and that nvidia-smi works inside the container. Signal 4 or 11 (illegal "
            "instruction, segmentation fault): the CPU lacks instructions the image needs, or the driver does not "
            "match."
        ),
    ),
    Rule(
        cause="binary_missing",
        patterns=patterns(r"text-generation-(?:server|router) not found in PATH"),
        title=_("TGI is not installed where the launcher runs"),
        next_step=_(
            "A native launch needs `text-generation-server` and `text-generation-router` on the PATH of the "
            "worker that starts it: install TGI there, or deploy with the Docker image."
        ),
    ),
    Rule(
        cause="incompatible",
        patterns=patterns(
            r"Unsupported model type",
            r"requires Flash Attention",
            r"(?i)sharding is currently not supported with .exl2. quantization",
            # "sharded is not supported for this model" / "... for AutoModel": no tensor-parallel implementation.
            r"(?i)sharded is not supported for \w+",
            r"Could not determine model type",
            r"Only 1 can be set between .dtype. and .quantize.",
            # Flash Attention kernels on a GPU older than Ampere (V100, T4): at import or at the first forward.
            r"FlashAttention only supports Ampere GPUs",
            r"GPU with CUDA capability \d+ \d+ is not supported",
        ),
        title=_("This TGI cannot run the model with these settings"),
        next_step=_(
            "Pick an architecture and quantization this TGI version supports: `--dtype` and `--quantize` cannot "
            "be combined (except bitsandbytes), exl2 checkpoints cannot be sharded (use AWQ or GPTQ), and a model "
            "that requires Flash Attention needs a GPU and image that have it (Ampere or newer), or one shard. If "
            "the checkpoint is in a format TGI cannot load, convert it on CPU first and deploy the converted "
            "directory."
        ),
        also=patterns(r"Error when initializing model"),
    ),
    Rule(
        cause="invalid_arguments",
        patterns=patterns(
            r"`num_heads` must be divisible by `num_shards`",
            r"The choos?en size \d+ is not compatible with sharding on \d+ shards",
            r"% self\.tp_world_size == 0",
        ),
        title=_("The model cannot be split evenly across the shards"),
        numbers=re.compile(r"(?:`num_shards`: |sharding on )(?P<shards>\d+)"),
        title_numbers=_("The model cannot be split evenly across %(shards)s shards"),
        next_step=_(
            "TGI gives every shard (one per GPU, `--num-shard`) an equal slice of the attention heads, the MLP and "
            "the vocabulary. Pick a shard count that divides the model's num_attention_heads, num_key_value_heads "
            "and vocab_size (config.json): usually 1, 2, 4 or 8; 3, 5 or 6 rarely work. If the model needs more "
            "GPUs than such a count gives, use a quantized checkpoint that fits on fewer."
        ),
        also=patterns(r"Error when initializing model"),
    ),
    Rule(
        cause="incompatible",
        patterns=patterns(
            # GPTQ/AWQ/compressed-tensors parameters the loader asked for and the checkpoint does not hold.
            r"weight \S*(?:qweight|qzeros|scales|g_idx|gptq_bits|gptq_groupsize|weight_scale|input_scale)\S* "
            r"does not exist",
            # A paste cut before the final line still shows which parameter was looked up.
            r'get_tensor\("gptq_(?:bits|groupsize)"\)',
            r"Cannot find gptq_bits",
        ),
        title=_("The checkpoint lacks the quantization parameters TGI looked for"),
        numbers=re.compile(r"weight (?P<tensor>[^\s{}]+) does not exist"),
        title_numbers=_("The checkpoint has no %(tensor)s, which its quantization needs"),
        next_step=_(
            "TGI read the checkpoint as a quantized one and did not find that method's tensors or settings: "
            "`--quantize` names a method the checkpoint was not made with (an AWQ repo loaded as gptq, a plain "
            "checkpoint with `--quantize gptq`), or a GPTQ checkpoint lacks the parameters TGI reads (bits, group "
            "size, act-order g_idx). Leave `--quantize` empty so TGI takes the method from quantization_config in "
            "config.json, or set it to the checkpoint's own method; to quantize a plain checkpoint on load use "
            "bitsandbytes-nf4, eetq or fp8. Some repos keep each GPTQ variant on its own branch: pick that revision."
        ),
        also=patterns(r"Error when initializing model"),
    ),
    Rule(
        cause="incompatible",
        # Not the f-string in TGI's own source line that a traceback prints: `weight {tensor_name} does not exist`.
        patterns=patterns(
            r"weight [^\s{}]+ does not exist",
            # A paste cut right after the tensor name.
            r"^RuntimeError: weight [^\s{}]+\s*$",
        ),
        title=_("The checkpoint lacks a weight TGI needs"),
        numbers=re.compile(r"weight (?P<tensor>[^\s{}]+) does not exist"),
        title_numbers=_("The checkpoint has no weight %(tensor)s"),
        next_step=_(
            "TGI's implementation of this architecture expects a tensor the checkpoint does not have. Check that the "
            "model directory is complete (every file model.safetensors.index.json lists; no interrupted download), "
            "that it is a whole model and not a LoRA adapter (merge the adapter, or deploy the base model with it), "
            "that a quantized checkpoint (AWQ, GPTQ: `qweight` tensors instead of `weight`) runs with its "
            "`--quantize` method, and that this TGI supports this exact variant of the architecture (tied "
            "embeddings saved without lm_head, a classification head, a newer revision of the model): a newer TGI "
            "image, or the checkpoint saved again with transformers' save_pretrained, usually loads."
        ),
        also=patterns(r"Error when initializing model"),
    ),
    Rule(
        cause="invalid_arguments",
        # Inference Endpoints show the exit reason without its "Error" prefix.
        patterns=patterns(r"^\s*(?:Error)?: ArgumentValidation\(", r"NotEnoughCUDADevices"),
        title=_("TGI refused the launch arguments"),
        numbers=re.compile(r'(?:ArgumentValidation|NotEnoughCUDADevices)\("(?P<detail>.*)"\)'),
        title_numbers=_("TGI refused the launch arguments: %(detail)s"),
        next_step=_(
            "Fix the setting the message names: `--max-input-tokens` must be below `--max-total-tokens`; "
            "`--num-shard` cannot exceed the GPUs given to the deployment (check CUDA_VISIBLE_DEVICES); "
            "`--max-batch-prefill-tokens` must be at least `--max-input-tokens` for models that cannot chunk "
            "prefill. Then deploy again."
        ),
    ),
    Rule(
        cause="port_in_use",
        patterns=patterns(r"Address already in use"),
        title=_("A port TGI needs is already in use"),
        numbers=re.compile(r"bind to \[?[^\s\]]*\]?:(?P<port>\d+)"),
        title_numbers=_("Port %(port)s is already in use"),
        next_step=_(
            "Another server holds the port: another deployment on this host, a leftover TGI container or "
            "process, or an unrelated service. Stop it (`docker ps`, `ss -ltnp`) or give this deployment another "
            "port. Native TGI 3.3 and later also binds `--prometheus-port` (default 9000), and sharded runs use "
            "`--master-port` (default 29500): two deployments on one host need different values."
        ),
        also=patterns(r"Webserver Crashed"),
    ),
    Rule(
        cause="port_in_use",
        # hyper's bind failure in the router; the reason after it (in use, permission denied) may be cut off.
        patterns=patterns(r"error binding to \S+:\d+"),
        title=_("TGI could not listen on its HTTP port"),
        numbers=re.compile(r"error binding to \S*:(?P<port>\d+)"),
        title_numbers=_("TGI could not listen on port %(port)s"),
        next_step=_(
            "The router could not open its HTTP port. Another process may hold it (another deployment on this "
            "host, a leftover TGI container or process, an unrelated service: `ss -ltnp`), or the port is below "
            "1024 and TGI runs as a user that may not bind it (a rootless container, a native launch as a normal "
            "user): use a port of 1024 or above, such as 8080. Give this deployment a free port and deploy again."
        ),
        also=patterns(r"Webserver Crashed", r"^\s*Error: WebserverFailed"),
    ),
    Rule(
        cause="warmup_memory",
        patterns=patterns(
            r"Not enough memory to handle \d+ prefill tokens",
            # TGI before 1.0 warmed up with --max-batch-total-tokens as well.
            r"Not enough memory to handle \d+ total tokens with \d+ prefill tokens",
            # The router's own warm-up call, when the shard's allocator refuses instead of raising its message.
            r"Unable to warmup model: .*(?:out of memory|would exceed allowed memory)",
        ),
        title=_("Not enough GPU memory for the warm-up batch"),
        numbers=re.compile(r"Not enough memory to handle (?P<tokens>\d+) prefill tokens"),
        title_numbers=_("Not enough GPU memory to warm up with %(tokens)s prefill tokens"),
        next_step=format_lazy(
            "{} {}",
            _(
                "The weights loaded, but the warm-up prefill batch did not fit in the memory left. Lower "
                "`--max-batch-prefill-tokens` first (it must stay at least `--max-input-tokens` unless the model "
                "chunks prefill)."
            ),
            MEMORY_LEVERS,
        ),
        also=patterns(r"Method Warmup encountered an error", r"Webserver Crashed"),
        next_step_cpu=format_lazy(
            "{} {}", _("The warm-up prefill batch did not fit. Lower `--max-batch-prefill-tokens`."), CPU_MEMORY_LEVERS
        ),
    ),
    Rule(
        cause="kv_capacity",
        patterns=patterns(r"Not enough memory to handle .max_total_tokens=\d+", r"NotEnoughMemory\(\d+\)"),
        title=_("The KV cache cannot hold one full-length request"),
        numbers=re.compile(r"(?:max_total_tokens=|NotEnoughMemory\()(?P<tokens>\d+)"),
        title_numbers=_("The KV cache cannot hold one request of max_total_tokens=%(tokens)s"),
        next_step=format_lazy(
            "{} {}",
            _(
                "After warm-up, the memory left for the KV cache holds fewer tokens than `--max-total-tokens`. "
                "Lower `--max-total-tokens` (and `--max-input-tokens`), or free memory for the KV cache."
            ),
            MEMORY_LEVERS,
        ),
        also=patterns(r"Setting max batch total tokens to \d+", r"KV-cache blocks: "),
        next_step_cpu=format_lazy(
            "{} {}",
            _("After warm-up, the memory left for the KV cache holds fewer tokens than `--max-total-tokens`."),
            CPU_MEMORY_LEVERS,
        ),
    ),
    Rule(
        cause="cuda_oom",
        patterns=patterns(r"OutOfMemoryError", r"CUDA out of memory", r"Not enough memory to load the model"),
        title=_("The GPU ran out of memory while loading the model"),
        numbers=re.compile(r"Tried to allocate (?P<size>[\d.]+ [KMGT]?i?B)"),
        title_numbers=_("The GPU ran out of memory while loading the model (tried to allocate %(size)s)"),
        next_step=format_lazy(
            "{} {}",
            _("The weights (with the CUDA context) did not fit in the GPU memory this deployment may use."),
            MEMORY_LEVERS,
        ),
        also=patterns(r"Error when initializing model", r"Shard \d+ failed to start"),
    ),
    Rule(
        cause="shm",
        patterns=patterns(r"signaled to shutdown with signal 7\b", r"Error while creating shared memory segment"),
        title=_("Not enough shared memory (/dev/shm) for the shards"),
        next_step=_(
            "Tensor-parallel shards talk through /dev/shm, and Docker gives a container 64 MB by default. Start "
            "the container with `--shm-size 1g` or more (or `--ipc=host`; in Kubernetes an emptyDir with medium "
            "Memory mounted at /dev/shm). If that is not possible, set NCCL_SHM_DISABLE=1 (slower)."
        ),
    ),
    Rule(
        cause="host_oom_kill",
        patterns=patterns(r"signaled to shutdown with signal 9\b", r"OOMKilled", r"Out of memory: Killed process"),
        title=_("The host killed TGI for using too much RAM"),
        next_step=_(
            "The kernel's OOM killer or the container's memory limit killed a process (signal 9, exit code 137). "
            "Raise the container's memory limit or free RAM on the host. Loading a checkpoint on CPU to convert "
            "it (for example .bin to safetensors) needs far more RAM: convert it once beforehand and deploy the "
            "safetensors. `dmesg` or `docker inspect` (State.OOMKilled) confirms the kill."
        ),
        context=oom_killed,
    ),
    Rule(
        cause="nccl",
        patterns=patterns(
            r"Watchdog caught collective operation timeout",
            r"NCCL error",
            r"\bnccl(?:System|Internal|UnhandledCuda|InvalidUsage|Remote)Error\b",
            r"DistBackendError",
            # torch.distributed's store between the shards (--master-addr/--master-port).
            r"The client socket has failed to connect to",
        ),
        title=_("The shards could not talk to each other over NCCL"),
        next_step=_(
            "Tensor-parallel shards exchange results through NCCL, and it failed to connect or timed out. Deploy "
            "with one shard to tell NCCL apart from the model; check that no other job uses these GPUs, that the "
            "container has enough /dev/shm (`--shm-size 1g` or `--ipc=host`), and that the GPUs can reach each "
            "other peer to peer (consumer GPUs and some VMs cannot: set NCCL_P2P_DISABLE=1). NCCL_DEBUG=INFO in "
            "the environment prints NCCL's own reason. A first timeout can be transient: deploy again."
        ),
        also=patterns(r"ProcessGroupNCCL\.cpp", r"Shard \d+ failed to start"),
    ),
    Rule(
        cause="not_found",
        patterns=patterns(
            r"HFValidationError",
            r"Repo id must be in the form",
            r"is not a local folder and is not a valid model identifier",
        ),
        title=_("The model id is neither a directory TGI can see nor a Hub repo id"),
        numbers=re.compile(r"(?:namespace/repo_name'?: |OSError: )'?(?P<path>[^'\s]+)'?"),
        title_numbers=_("%(path)s is neither a directory TGI can see nor a Hub repo id"),
        next_step=_(
            "A model id that is a path must exist where TGI runs: in Docker, inside the container. Mount the host "
            "directory (`-v /srv/models:/data`) and pass the path as the container sees it (`--model-id "
            "/data/<name>`); for a Hugging Face cache, the snapshot directory (models--org--name/snapshots/<sha>), "
            "not the cache root. A Hub id is org/name, with no leading /, ~ or ./. A model added under Models is "
            "mounted by the console: deploy the stored copy."
        ),
        also=patterns(r"Download encountered an error"),
    ),
    Rule(
        cause="not_found",
        patterns=patterns(
            r"RepositoryNotFoundError",
            r"Repository Not Found for url",
            r"RevisionNotFoundError",
            r"(?<!Local)EntryNotFoundError",
            # The Hub client raises this one for a failed connection too; `network` reads that case.
            r"LocalEntryNotFoundError(?!.*check your connection)",
            r"No local weights found",
            r"OfflineModeIsEnabled",
            r"Please run .?text-generation-server download-weights",
        ),
        title=_("The model, revision or weight files were not found"),
        next_step=_(
            "Check the repo id (org/name) and the revision (a branch, tag or full commit sha). A private repo "
            "answers “not found” without a token that can read it: store one under Credentials and pick it. "
            "With HF_HUB_OFFLINE=1 the model must be downloaded first: add it under Models and deploy the stored "
            "copy. A local directory must hold the weights as *.safetensors."
        ),
        also=patterns(r"Download encountered an error"),
    ),
    Rule(
        cause="not_found",
        # The router loads the tokenizer itself (tokenizer.json) and stops when the model has none it can read.
        patterns=patterns(r"doesn't have a tokenizer", r"Could not find tokenizer"),
        title=_("TGI found no tokenizer for the model"),
        next_step=_(
            "TGI's router needs the model's fast tokenizer (tokenizer.json) next to the weights. Check that the "
            "repo or directory holds tokenizer.json and tokenizer_config.json (a download that fetched only the "
            "weights, or a converted checkpoint, often lacks them). A model that ships only a slow tokenizer "
            "(tokenizer.model): load it with transformers and save it again (`AutoTokenizer.from_pretrained(...)"
            ".save_pretrained(dir)` writes tokenizer.json), or use a newer TGI image."
        ),
    ),
    Rule(
        cause="auth",
        patterns=patterns(
            r"GatedRepoError",
            r"Cannot access gated repo",
            r"Access to model \S+ is restricted",
            r"\b40[13] Client Error",
        ),
        title=_("The Hub refused access: gated repo or missing token"),
        next_step=_(
            "Accept the model's license on its Hugging Face page with the account that owns the token (some repos "
            "need an approval first), then store a read token under Credentials and pick it for this deployment. "
            "A fine-grained token also needs read access to public gated repos."
        ),
        also=patterns(r"Download encountered an error"),
    ),
    Rule(
        cause="network",
        patterns=patterns(
            r"ConnectionError",
            r"Max retries exceeded",
            r"NameResolutionError",
            r"Temporary failure in name resolution",
            r"check your connection",
            r"Retry \d+/\d+",
        ),
        title=_("The host could not reach the Hugging Face Hub"),
        next_step=_(
            "Check the host's DNS and outbound HTTPS to huggingface.co (or the mirror in HF_ENDPOINT) and any "
            "proxy (HTTPS_PROXY). On an air-gapped host, download the model first and deploy the stored copy."
        ),
        also=patterns(r"Download encountered an error"),
        # A retried download that then succeeded did not make the launch fail.
        cleared_by=patterns(r"Successfully downloaded weights"),
    ),
    Rule(
        cause="health_deadline",
        patterns=patterns(r"Deadline passed while "),
        title=_("TGI was not ready before the deadline"),
        numbers=re.compile(r"Deadline passed while (?P<state>[^.]+)"),
        title_numbers=_("TGI was not ready before the deadline (still %(state)s)"),
        next_step=_(
            "TGI neither failed nor became ready in time; it has no startup timeout of its own. A large download "
            "on a slow link, a slow disk, or an NCCL hang across several GPUs keeps it waiting. Look at the last "
            "progress lines: download the model first or raise the deadline for a big model; if shards wait "
            "with no progress on several GPUs, check /dev/shm and try NCCL_P2P_DISABLE=1."
        ),
        context=deadline_passed,
    ),
    Rule(
        cause="crashed",
        patterns=patterns(
            r"Shard \d+ crashed",
            r"Webserver Crashed",
            r"Shard \d+ failed to start",
            r"^\s*Error: (?:ShardFailed|WebserverFailed|ShardCannotStart|DownloadError)\b",
            r"Download encountered an error",
            r"Error when initializing model",
            r"signaled to shutdown with signal \d+",
            # The router lost a shard: its socket is gone or the connection broke mid-call.
            r"Server error: transport error",
            r"Server error: error trying to connect",
            # A C++ exception in torch (CUDA error, NCCL watchdog) ending a running shard.
            r"^Exception raised from \S+ at ",
        ),
        title=_("A TGI process crashed"),
        numbers=re.compile(r"^\s*Error: (?P<reason>\w+)"),
        title_numbers=_("TGI stopped (%(reason)s)"),
        next_step=_(
            "The log names no known cause. Read the Python traceback printed after “Shard complete standard "
            "error output” and the last ERROR lines before the final “Error:” line, fix what they name and "
            "deploy again. A crash of a running deployment can also be a GPU fault: look for Xid errors in "
            "`dmesg` and check nvidia-smi."
        ),
    ),
)

UNKNOWN_TITLE = _("No known cause in the log")
UNKNOWN_TITLE_EXIT = _("No known cause in the log (exit code %(code)s)")
UNKNOWN_NEXT_STEP = _(
    "Read the last ERROR lines of the log; a crashed shard's Python traceback follows “Shard complete standard "
    "error output”. If the log ends without an error, TGI may still be starting: the HTTP port opens only after "
    "warm-up."
)

BOOK = engine.RuleBook(RULES, UNKNOWN_TITLE, UNKNOWN_TITLE_EXIT, UNKNOWN_NEXT_STEP)
CAUSES: tuple[str, ...] = BOOK.causes
MAX_EVIDENCE = engine.MAX_EVIDENCE
log_lines = engine.log_lines


def diagnose(lines, *, exit_code: int | None = None, context: dict | None = None) -> Diagnosis:
    """Name the cause of a failed or crashed TGI launch (see deployments.backends.diagnosis.diagnose)."""
    return engine.diagnose(lines, BOOK, exit_code=exit_code, context=context)


def diagnose_text(text: str, **kwargs: Any) -> Diagnosis:
    """`diagnose` for a whole log in one string."""
    return diagnose(text.splitlines(), **kwargs)

"""vLLM's rule book: the failures `vllm serve` reports, each rule tested on real logs from public issue threads
(tests/fixtures/vllm-failures, with the thread of each in its index.json).

Cause ids are TGI's where the cause is the same thing (the UI, the docs and the restart policy list them):
`kv_capacity`, `cuda_oom`, `auth`, `port_in_use`, `incompatible`, `invalid_arguments`... Several rules may share
one id and still say more precisely what happened in their title and next step. Matched in order, so a specific
cause wins over a generic one in the same log: vLLM ends most startup failures with "Engine core initialization
failed", which is `crashed` only when nothing before it names the root cause.
"""

from __future__ import annotations

import re
from typing import Any

from django.utils.text import format_lazy
from django.utils.translation import gettext_lazy as _

from deployments.backends import diagnosis as engine
from deployments.backends.diagnosis import Diagnosis, Rule, deadline_passed, image_missing, oom_killed, patterns
from deployments.backends.vllm.launch import RELEASE

RULES: tuple[Rule, ...] = (
    Rule(
        cause="image_missing",
        patterns=patterns(r"No such image", r"pull access denied", r"manifest unknown", r"manifest for \S+ not found"),
        title=_("The container image is missing"),
        next_step=_(
            "Docker could not find or pull the vLLM image. Check the deployment's Image (an allowed image pinned by "
            "digest), check that the host reaches the registry (`docker login` for a private one), or pull the image "
            "on the host first (`docker load` on an air-gapped host)."
        ),
        context=image_missing,
    ),
    Rule(
        cause="invalid_arguments",
        # argparse's refusal, printed before anything loads (exit code 2); the program is `vllm`, `vllm serve` or,
        # in older images whose entrypoint is the API server module, `api_server.py`.
        patterns=patterns(r"\b(?:vllm(?: serve)?|api_server\.py): error: unrecognized arguments: "),
        title=_("This vLLM does not know an argument of the launch"),
        numbers=re.compile(r"error: unrecognized arguments: (?P<argument>\S+)"),
        title_numbers=_("This vLLM does not know the argument %(argument)s"),
        next_step=format_lazy(
            _(
                "vLLM's parser refused an argument before loading anything: the vLLM release in the image does not "
                "have this flag. The console builds `vllm serve`'s flags for vLLM {release} (its flag table, "
                "workers/jobs/flags/vllm.json), and other releases add, rename and remove flags. Use an image of "
                "vLLM {release} under Image (vllm/vllm-openai:v{release}, pinned by digest; on a host that runs vLLM "
                "natively, install vLLM {release} there), or remove the variable or setting that produced the flag "
                "(the deployment page previews the whole `vllm serve` command). When the refused argument is not a "
                "flag but the model path or `serve`, the image does not start `vllm serve` as vLLM {release}'s "
                "images do (older ones start the API server module, which takes the model as --model): use an "
                "official image of vLLM {release}."
            ),
            release=RELEASE,
        ),
    ),
    Rule(
        cause="gpu_runtime",
        patterns=patterns(
            r"NVIDIA driver on your system is too old",
            r"\bError 80[34]: ",  # unsupported display driver / cuda driver combination; forward compatibility
            r"CUDA driver version is insufficient",
            r"Found no NVIDIA driver",
            r'could not select device driver ".*" with capabilities: \[\[gpu\]\]',
            r"cannot find -lcuda\b",
        ),
        title=_("The GPU driver does not work with this vLLM image"),
        # The driver reports its CUDA version as 1000 x major + 10 x minor: 12080 is CUDA 12.8.
        numbers=re.compile(r"too old \(found version (?P<major>\d+?)0(?P<minor>\d)0\)"),
        title_numbers=_("The NVIDIA driver supports CUDA up to %(major)s.%(minor)s, older than this vLLM image needs"),
        next_step=_(
            "vLLM's CUDA runtime needs a host driver at least as new as the CUDA version the image was built with; "
            "`nvidia-smi` on the host shows the highest CUDA version its driver supports. Upgrade the host's NVIDIA "
            "driver, or pick a vLLM image built for an older CUDA under Image. `Error 803` also means the container "
            "sees other driver libraries than the host runs: start it through the NVIDIA Container Toolkit and do "
            "not ship driver libraries in the image. `cannot find -lcuda`: the driver library libcuda.so is not "
            "visible to vLLM, which torch.compile needs: install the NVIDIA Container Toolkit and restart Docker, or "
            "add the driver's library directory to the worker's library path."
        ),
    ),
    Rule(
        cause="gpu_runtime",
        patterns=patterns(r"no kernel image is available for execution on the device"),
        title=_("This vLLM build has no CUDA kernels for this GPU"),
        next_step=_(
            "The vLLM image (or the torch and vLLM installed on the worker) was not compiled for this GPU's "
            "architecture. The newest GPUs (RTX 50xx, B200: compute capability 10.0 and 12.0) need a vLLM image "
            "built with CUDA 12.8 or newer; GPUs older than compute capability 7.0 are not supported at all. Pick a "
            "vLLM image whose release notes list this GPU under Image, or deploy on other GPUs."
        ),
    ),
    Rule(
        cause="gpu_runtime",
        patterns=patterns(r"No CUDA GPUs are available", r"has no GPU available", r"Failed to infer device type"),
        title=_("vLLM found no GPU to run on"),
        next_step=_(
            "The vLLM process saw no CUDA GPU. With the docker runtime the NVIDIA Container Toolkit must be installed "
            "(`docker run --rm --gpus all <image> nvidia-smi` on the host shows whether a container gets GPUs). With "
            "the process runtime, check that `nvidia-smi` works for the worker's user and that CUDA_VISIBLE_DEVICES "
            "names GPUs that exist. A deployment without GPUs needs Device set to CPU and a vLLM build for CPU."
        ),
    ),
    Rule(
        cause="port_in_use",
        patterns=patterns(r"[Aa]ddress already in use", r"\bEADDRINUSE\b"),
        title=_("A port vLLM needs is already in use"),
        numbers=re.compile(r"bind on address \('[^']*', (?P<port>\d+)\)"),
        title_numbers=_("Port %(port)s is already in use"),
        next_step=_(
            "Another server holds the port: another deployment on this host, a vLLM process left over from a crashed "
            "deployment, or an unrelated service. Stop it (`docker ps`, `ss -ltnp`) or give this deployment another "
            "port. With several GPUs vLLM also opens ports for its workers (torch.distributed, from VLLM_PORT when "
            "set): two vLLM servers on one host must not share a VLLM_PORT."
        ),
    ),
    Rule(
        cause="not_found",
        # vLLM's LoRAAdapterNotFoundError (a ValueError in older releases). The name may come quoted in a list
        # when the engine core re-raises it: `Loading lora ["table_qc failed: No adapter found for /path"]`. Before
        # the generic not_found: vLLM first tries a missing path as a Hub repo id, and the Hub client's error
        # ("Repo id must be in the form ...", RepositoryNotFoundError) is logged above this line.
        # Not the f-string of a traceback's source line (`raise ...(f"Loading lora {name} failed: ...")`).
        patterns=patterns(r"Loading lora [^\s{]+ failed: No adapter found for [^\s{]"),
        title=_("A LoRA adapter was not found"),
        numbers=re.compile(r'Loading lora \[?"?(?P<name>[^\s"\[\]]+) failed: No adapter found for (?P<path>[^\s"\]]+)'),
        title_numbers=_("LoRA adapter %(name)s was not found at %(path)s"),
        next_step=_(
            "vLLM found no adapter at the path given for this LoRA adapter: it needs a directory holding "
            "adapter_config.json and the adapter's weights (adapter_model.safetensors), and takes any other path "
            "for a Hugging Face repo id. Each entry of “LoRA adapters” must give a directory in the host's model "
            "store that holds both files (a fine-tune's output directory, as peft saves it). Fix the adapter's path "
            "in the deployment's “LoRA adapters”, or import the adapter again if its directory is gone or "
            "incomplete, and deploy again."
        ),
        # Before giving up, vLLM tried the path as a Hub repo id and logged why that failed too.
        also=patterns(r"Error downloading the HuggingFace model"),
    ),
    Rule(
        cause="not_found",
        patterns=patterns(
            r"Invalid repository ID or local directory specified",
            r"RepositoryNotFoundError",
            r"Repository Not Found for url",
            r"RevisionNotFoundError",
            r"(?<!Local)EntryNotFoundError",
            r"Repo id must be in the form",
            r"OfflineModeIsEnabled",
        ),
        title=_("The model, revision or weight files were not found"),
        next_step=_(
            "vLLM found neither a model directory with a config.json nor a Hub repository of that name. For a model "
            "from the console's store, check that its directory still holds config.json and the *.safetensors "
            "files (import it again if not). For a repo id, check the name (org/name) and the revision; a private "
            "repo answers “not found” without a token that can read it: store one under Credentials and pick it as "
            "the Hugging Face token. Some vLLM versions report a Hub they cannot reach the same way: if the name is "
            "right, check the host's access to huggingface.co."
        ),
    ),
    Rule(
        cause="auth",
        patterns=patterns(
            r"GatedRepoError",
            r"Cannot access gated repo",
            r"You are trying to access a gated repo",
            r"Access to model \S+ is restricted",
            r"\b40[13] Client Error",
        ),
        title=_("The Hub refused access: gated repo or missing token"),
        next_step=_(
            "Accept the model's license on its Hugging Face page with the account that owns the token (some repos "
            "need an approval first), then store a read token under Credentials and pick it as the deployment's "
            "Hugging Face token (vLLM reads it as HF_TOKEN). A fine-grained token also needs read access to public "
            "gated repos. Or add the model under Models once and deploy the stored copy."
        ),
    ),
    Rule(
        cause="network",
        patterns=patterns(
            r"ConnectionError",
            r"Max retries exceeded",
            r"NameResolutionError",
            r"Temporary failure in name resolution",
            r"check your connection",
        ),
        title=_("The host could not reach the Hugging Face Hub"),
        next_step=_(
            "vLLM reads the model's config from the Hub at start when it is given a repo id. Check the host's DNS and "
            "outbound HTTPS to huggingface.co (or the mirror in HF_ENDPOINT) and any proxy (HTTPS_PROXY). On an "
            "air-gapped host, add the model under Models first and deploy the stored copy."
        ),
    ),
    Rule(
        cause="gpu_memory_in_use",
        patterns=patterns(r"Free memory on device .*on startup is less than desired GPU memory utilization"),
        title=_("Other processes hold memory on the GPU vLLM wants"),
        numbers=re.compile(
            r"\((?P<free>[\d.]+)/(?P<total>[\d.]+) GiB\) on startup is less than desired GPU memory utilization "
            r"\((?P<util>[\d.]+), (?P<wanted>[\d.]+) GiB\)"
        ),
        title_numbers=_(
            "Only %(free)s of %(total)s GiB are free on the GPU; vLLM wants %(wanted)s GiB (utilization %(util)s)"
        ),
        next_step=_(
            "vLLM reserves GPU memory utilization x the GPU's total memory at start and refuses to start when less "
            "is free. Something else holds memory on this GPU: another deployment placed on it, a vLLM process left "
            "over from a crashed deployment (look at `nvidia-smi` on the host and stop it), or a process the console "
            "does not know. Free the GPU, or lower “GPU memory utilization” (`gpu_memory_utilization`) so the "
            "reservation fits in what is free: deployments sharing a GPU must have utilizations that add up to less "
            "than 1."
        ),
    ),
    Rule(
        cause="kv_capacity",
        patterns=patterns(
            r"max seq len \(\d+\) is larger than the maximum number of tokens that can be stored in KV cache",
            r"To serve at least one request with the models?'s max seq len",
        ),
        title=_("The KV cache cannot hold one request of the maximum length"),
        numbers=re.compile(r"max seq len \((?P<tokens>\d+)\)"),
        title_numbers=_("The KV cache cannot hold one request of max_model_len=%(tokens)s"),
        next_step=_(
            "After the weights and the activation peak, the GPU memory vLLM may use leaves less KV cache than one "
            "request of the maximum length needs. Lower “Max model length” (`max_model_len`) to what fits: vLLM "
            "prints the estimate (“the estimated maximum model length is N”), and without a value it takes the "
            "model's whole context, often 32k to 128k tokens. Or make room: a higher “GPU memory utilization” (if "
            "the GPU has memory free), “KV cache dtype” fp8 (halves the KV cache), a quantized checkpoint "
            "(“Quantization”), or more GPUs (“GPUs (num_shard)”)."
        ),
        also=patterns(r"GPU KV cache size: ", r"Maximum concurrency for ", r"# GPU blocks: \d+"),
    ),
    Rule(
        cause="kv_capacity",
        patterns=patterns(r"No available memory for the cache blocks", r"# GPU blocks: 0\b"),
        title=_("No GPU memory is left for the KV cache"),
        next_step=_(
            "The weights and the activation peak vLLM measured at start already fill GPU memory utilization x the "
            "GPU's memory, so not one KV-cache block fits. Raise “GPU memory utilization” "
            "(`gpu_memory_utilization`) if the GPU has memory free (`nvidia-smi`), lower “Max batched tokens” "
            "(`max_num_batched_tokens`) and “Max sequences per batch” (`max_num_seqs`), which set the activation "
            "peak, use a quantized checkpoint (“Quantization”), or add GPUs (“GPUs (num_shard)”). If another "
            "process holds memory on the GPU, free it first."
        ),
    ),
    Rule(
        cause="invalid_arguments",
        patterns=patterns(r"Total number of attention heads \(\d+\) must be divisible by tensor parallel size \(\d+\)"),
        title=_("The attention heads cannot be split evenly across the GPUs"),
        numbers=re.compile(
            r"attention heads \((?P<heads>\d+)\) must be divisible by tensor parallel size \((?P<tp>\d+)\)"
        ),
        title_numbers=_("%(heads)s attention heads cannot be split evenly across %(tp)s GPUs"),
        next_step=_(
            "vLLM gives each GPU of a deployment the same number of attention heads (tensor parallelism). Set "
            "“GPUs (num_shard)” to a number that divides the model's head count (for 32 heads: 1, 2, 4 or 8; "
            "for 28: 1, 2, 4 or 7), at least as many as the planner says the model needs, or use a quantized "
            "checkpoint that fits on fewer GPUs."
        ),
    ),
    Rule(
        cause="invalid_arguments",
        patterns=patterns(r"User-specified max_model_len \(\d+\) is greater than the derived max_model_len"),
        title=_("The max model length is longer than the model's context"),
        numbers=re.compile(
            r"User-specified max_model_len \((?P<tokens>\d+)\) is greater than the derived max_model_len"
        ),
        title_numbers=_("max_model_len=%(tokens)s is longer than the model's context"),
        next_step=_(
            "Set “Max model length” (`max_model_len`) to at most the model's context window (max_position_embeddings "
            "in its config.json; the message names the value vLLM found), or leave it empty to use exactly that. "
            "Longer contexts need a checkpoint configured for them (RoPE scaling); the console does not set "
            "VLLM_ALLOW_LONG_MAX_MODEL_LEN, which can give wrong outputs or CUDA errors."
        ),
    ),
    Rule(
        cause="invalid_arguments",
        patterns=patterns(r"LoRA rank \d+ is greater than max_lora_rank \d+", r"max_lora_rank \(\d+\) must be one of"),
        title=_("A LoRA adapter's rank does not fit vLLM's max_lora_rank"),
        next_step=_(
            "vLLM reserves LoRA slots for one maximum rank (`--max-lora-rank`, 16 by default, and only the values "
            "the message lists, such as 8, 16, 32 or 64) and refuses a larger adapter. The launch needs "
            "`--max-lora-rank` at least the largest adapter rank (`r` in each adapter's adapter_config.json), "
            "rounded up to an allowed value; otherwise remove that adapter from “LoRA adapters” or train it with a "
            "smaller rank."
        ),
    ),
    Rule(
        cause="incompatible",
        patterns=patterns(
            r"quantization method \S+ is not supported for the current GPU",
            r"Quantization scheme is not supported for",
        ),
        title=_("This GPU is too old for the checkpoint's quantization"),
        numbers=re.compile(
            r"quantization method (?P<method>\S+) is not supported for the current GPU\. "
            r"Minimum capability: (?P<need>\d+)(?P<need_minor>\d)\. "
            r"Current capability: (?P<have>\d+)(?P<have_minor>\d)\b"
        ),
        title_numbers=_(
            "%(method)s needs GPU compute capability %(need)s.%(need_minor)s; this GPU has %(have)s.%(have_minor)s"
        ),
        next_step=_(
            "vLLM's kernels for this quantization need a newer GPU (compute capability 7.0: V100; 7.5: T4, RTX 20xx; "
            "8.0: A100; 8.6: A10, RTX 30xx; 8.9: L4, L40, RTX 40xx; 9.0: H100, H200). Deploy on GPUs with at least "
            "the minimum capability (chosen GPUs), or use a checkpoint whose quantization this GPU supports, or the "
            "unquantized model in float16 (“Quantization”, “dtype”)."
        ),
    ),
    Rule(
        cause="incompatible",
        patterns=patterns(r"Bfloat16 is only supported on GPUs with compute capability of at least 8\.0"),
        title=_("This GPU has no bfloat16"),
        numbers=re.compile(r"Your (?P<gpu>.+?) GPU has compute capability (?P<cc>\d+\.\d+)"),
        title_numbers=_("bfloat16 needs compute capability 8.0; the %(gpu)s has %(cc)s"),
        next_step=_(
            "The model's config asks for bfloat16, which GPUs older than Ampere (V100, T4, RTX 20xx) do not have. "
            "Set “dtype” to float16 and deploy again."
        ),
    ),
    Rule(
        cause="incompatible",
        patterns=patterns(
            r"Unknown quantization method",
            r"Found unknown quantization",
            r"Quantization method specified in the model config \(\S+\) does not match",
        ),
        title=_("This vLLM cannot use the quantization asked for"),
        numbers=re.compile(r"Unknown quantization method: (?P<method>[\w-]+)\. Must be one of (?P<known>\[[^\]]*\])"),
        title_numbers=_("This vLLM does not know the quantization method %(method)s (it knows %(known)s)"),
        next_step=_(
            "Leave “Quantization” empty for a pre-quantized checkpoint: vLLM reads the method from the model's "
            "config, and a value that contradicts it is refused. Set it only to a method this vLLM image supports; "
            "an older image may not know newer methods, so pick a newer image under Image."
        ),
    ),
    Rule(
        cause="incompatible",
        patterns=patterns(
            r"Model architectures \[.*\] are not supported for now",
            r"Model architectures \[.*\] failed to be inspected",
            r"Error in inspecting model architecture",
        ),
        title=_("This vLLM cannot run the model's architecture"),
        numbers=re.compile(r"architectures? \[?(?P<arch>'\w+'(?:, '\w+')*)"),
        title_numbers=_("This vLLM cannot run the model's architecture %(arch)s"),
        next_step=_(
            "Look the architecture up in vLLM's list of supported models for the vLLM version of the image. If it is "
            "listed, vLLM failed to import the model code: the traceback after “Error in inspecting model "
            "architecture” names why, usually a broken install (torch, flash-attn or transformers that do not match "
            "vLLM in a hand-built image): use the official vLLM image. If it is not listed, use a newer vLLM image "
            "that supports it or deploy the model with TGI. Embedding and classifier checkpoints (LlamaModel, "
            "…ForSequenceClassification) are not text-generation models."
        ),
    ),
    Rule(
        cause="incompatible",
        patterns=patterns(
            r"requires you to execute the configuration file in that repo",
            r"contains custom code which must be executed",
        ),
        title=_("The model needs its own Python code (trust-remote-code)"),
        next_step=_(
            "This checkpoint defines its architecture in Python files of its repository, which vLLM runs only with "
            "`--trust-remote-code`. The console stores models without those files and does not run a repository's "
            "code. Deploy a version of the model whose architecture vLLM supports natively (many models have one, "
            "often named “-hf”), or serve it with TGI if TGI supports it."
        ),
    ),
    Rule(
        cause="cuda_oom",
        patterns=patterns(r"OutOfMemoryError", r"CUDA out of memory", r"CUDA (?:driver )?error: out of memory"),
        title=_("The GPU ran out of memory while vLLM started"),
        numbers=re.compile(r"Tried to allocate (?P<size>[\d.]+ [KMGT]?i?B)"),
        title_numbers=_("The GPU ran out of memory while vLLM started (tried to allocate %(size)s)"),
        next_step=_(
            "vLLM loads the weights, then runs one batch of max batched tokens to measure the activation peak, then "
            "captures CUDA graphs. Levers, in order of effect: a quantized checkpoint (“Quantization”); more GPUs "
            "(“GPUs (num_shard)”); a lower “Max batched tokens” (`max_num_batched_tokens`) and “Max sequences "
            "per batch” (`max_num_seqs`); a lower “GPU memory utilization” when the weights loaded and the "
            "failure came later (it leaves room for memory vLLM does not count, such as CUDA graphs and the "
            "sampler). Check with `nvidia-smi` that no other process holds memory on these GPUs (“Process N has X "
            "GiB memory in use” in the message) and that CUDA_VISIBLE_DEVICES names the GPUs you meant. If much "
            "memory is reserved but unallocated, set PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True."
        ),
        also=patterns(r"EngineCore failed to start", r"Exception in worker \S+ while processing method"),
    ),
    Rule(
        cause="shm",
        patterns=patterns(
            r"Error while (?:creating|attaching to) shared memory segment",
            r"\bncclShmOpen\b",
            # A worker killed by SIGBUS when it touches shared memory the container does not have.
            r"Fatal Python error: Bus error",
            r"\bSIGBUS received\b",
        ),
        title=_("Not enough shared memory (/dev/shm) for the GPU workers"),
        next_step=_(
            "vLLM's tensor-parallel workers talk through /dev/shm, and Docker gives a container 64 MB by default. "
            "Start the container with `--ipc=host` or `--shm-size` of several GB (in Kubernetes an emptyDir with "
            "medium Memory mounted at /dev/shm). If that is not possible, set NCCL_SHM_DISABLE=1 (slower)."
        ),
        also=patterns(r"NCCL error", r"ncclSystemError"),
    ),
    Rule(
        cause="nccl",
        patterns=patterns(
            r"NCCL error", r"\bnccl(?:System|Internal|UnhandledCuda|InvalidUsage)Error\b", r"DistBackendError"
        ),
        title=_("NCCL could not connect the GPUs of the deployment"),
        numbers=re.compile(r"NCCL error(?: in: \S+,)?:? (?P<detail>[a-z][a-z ]*error)"),
        title_numbers=_("NCCL could not connect the GPUs of the deployment (%(detail)s)"),
        next_step=_(
            "NCCL, the library vLLM's workers use to talk between GPUs, failed to set up. Check that the deployment "
            "starts on one GPU (“GPUs (num_shard)” = 1) to tell NCCL apart from the model, then look at NCCL's own "
            "reason with NCCL_DEBUG=INFO in the server's environment. Common causes: GPUs that cannot reach each "
            "other peer to peer (consumer GPUs, some VMs: NCCL_P2P_DISABLE=1), too little /dev/shm in a container "
            "(`--ipc=host`), or a driver too old for the image's NCCL."
        ),
    ),
    Rule(
        cause="host_oom_kill",
        patterns=patterns(r"OOMKilled", r"Out of memory: Killed process"),
        title=_("The host killed vLLM for using too much RAM"),
        next_step=_(
            "The kernel's OOM killer or the container's memory limit killed a process (exit code 137). vLLM needs "
            "host RAM to load the weights and keeps a CPU swap space for the KV cache (4 GiB per GPU by default). "
            "Raise the container's memory limit or free RAM on the host; `dmesg` or `docker inspect` "
            "(State.OOMKilled) confirms the kill."
        ),
        context=oom_killed,
    ),
    Rule(
        cause="health_deadline",
        patterns=patterns(r"Deadline passed while "),
        title=_("vLLM was not ready before the deadline"),
        numbers=re.compile(r"Deadline passed while (?P<state>[^.]+)"),
        title_numbers=_("vLLM was not ready before the deadline (still %(state)s)"),
        next_step=_(
            "vLLM neither failed nor became ready in time; it has no startup timeout of its own. A large download, a "
            "slow disk, the first torch.compile and CUDA-graph capture (minutes on a first start; later starts use "
            "the cache) or an NCCL hang across several GPUs keep it waiting. Look at the last progress lines: add "
            "the model under Models first, or raise the deadline for a big model; if workers wait with no progress "
            "on several GPUs, try NCCL_P2P_DISABLE=1."
        ),
        context=deadline_passed,
    ),
    Rule(
        cause="crashed",
        patterns=patterns(
            r"Engine core initialization failed",
            r"EngineCore failed to start",
            r"EngineCore (?:hit an exception|encountered a fatal error)",
            r"EngineDeadError",
            r"Engine process failed to start",
        ),
        title=_("vLLM's engine stopped"),
        next_step=_(
            "The log names no known cause. vLLM prints the root cause above “Engine core initialization failed”: "
            "read the first traceback of the EngineCore or worker processes, fix what it names and deploy again. A "
            "crash of a running deployment can also be a GPU fault: look for Xid errors in `dmesg` and check "
            "`nvidia-smi`."
        ),
    ),
)

UNKNOWN_TITLE = _("The vLLM server stopped for a reason the console does not recognise")
UNKNOWN_TITLE_EXIT = _("The vLLM server exited with code %(code)s for a reason the console does not recognise")
UNKNOWN_NEXT_STEP = _(
    "Read the last ERROR lines of the log; vLLM prints the root cause in the first traceback of its EngineCore or "
    "worker processes. If the log ends without an error, vLLM may still be starting: the HTTP port answers only "
    "after the weights are loaded, the KV cache is allocated and CUDA graphs are captured."
)

BOOK = engine.RuleBook(RULES, UNKNOWN_TITLE, UNKNOWN_TITLE_EXIT, UNKNOWN_NEXT_STEP)
# Several rules share a cause id; the ids, each once, in rule order.
CAUSES: tuple[str, ...] = tuple(dict.fromkeys(BOOK.causes))


def diagnose(lines, *, exit_code: int | None = None, context: dict | None = None) -> Diagnosis:
    """Name the cause of a failed or crashed vLLM launch (see deployments.backends.diagnosis.diagnose)."""
    return engine.diagnose(lines, BOOK, exit_code=exit_code, context=context)


def diagnose_text(text: str, **kwargs: Any) -> Diagnosis:
    """`diagnose` for a whole log in one string."""
    return diagnose(text.splitlines(), **kwargs)

"""Training memory before a fine-tune runs: weights, gradients, AdamW states, activations, overhead.

Pure arithmetic on config.json (parameters as the inference planner counts them, deployments.sizing.params), and
a verdict against the GPUs the placement engine picks. Bytes per device; data parallel only: each replica holds
a full copy of everything (no ZeRO, no FSDP), so more GPUs speed training up but never lower the memory per GPU.

Per parameter (P all, T trainable), as the fine-tune program (workers/jobs/finetune_train.py) runs: it loads the
model in the training precision (bf16 or fp16 on a GPU, fp32 on a CPU whatever was asked) and transformers'
Trainer never makes an fp32 master copy (its bf16/fp16 flag only adds autocast), so there is no mixed-precision
master term. Each tensor is counted at the dtype it really has:
- full: weights, gradients and AdamW's two moments all in the training precision (torch keeps the moments in the
  parameter's dtype): 2 + 2 + 4 bytes per parameter in bf16/fp16, 4 + 4 + 8 in fp32;
- LoRA: the frozen base in the training precision; peft upcasts the adapters to fp32 (autocast_adapter_dtype), so
  each adapter parameter holds 4 + 4 + 8 bytes;
- QLoRA: the base linears 4-bit NF4 (0.5 byte plus the block constants, as `memory.weight_bytes` counts
  bitsandbytes), the rest fp32 (peft's prepare_model_for_kbit_training upcasts embeddings and norms); TRL casts
  the adapters to bf16: 2 + 2 + 4 bytes each.

Activations: what autograd keeps for the backward pass, counted tensor by tensor for a Llama-style decoder layer
(RMSNorm, GQA attention through SDPA/flash, SwiGLU MLP, no dropout), following the method of Korthikanti et
al., "Reducing Activation Recomputation in Large Transformer Models" (2022, §4.1), whose GPT layer keeps
34·s·b·h + 5·a·s²·b bytes in 16-bit. A Llama layer keeps, per token, in elements of the activation dtype:
the two norm inputs (2h), the rotated query (h), key and value (2·kv), the attention output (h), the MLP's
gate, SiLU and up outputs (3i); when the norms train, their normalized outputs (2h); and each linear's input
when its weight trains or carries an adapter: q/k/v share one (h), o reuses the attention output (0), gate/up
share one (h), down its own (i). Full fine-tune: 8h + 2kv + 4i. SDPA and flash attention keep no s x s scores;
eager attention keeps the fp32 softmax (a·s per token). The figure was checked against the tensors autograd
saved for a 134M Llama on CPU (bench/train_memory_probe.py). Elements are 4 bytes under fp32, 2 under bf16/fp16,
except the two norm inputs: RMSNorm upcasts its input to fp32 and keeps that copy, 4 bytes each whatever the
precision (seen on CUDA, tests/fixtures/training-memory/cuda-h200.json).
With gradient checkpointing (transformers checkpoints every decoder layer) only each layer's input stays
(h per token per layer), and one layer's full activations come back during its backward pass.

The loss head, as the program's SFTTrainer (TRL 1.16) scores tokens: its fused LM head never holds the
(tokens x vocab) logits. It projects tiles of at most 4,096 tokens x 32,768 vocabulary entries and folds each
into running log-sum-exp statistics, in one Triton pass on CUDA (the tile in the compute dtype, rewritten in
place) and in whole-tile torch operations on a CPU (fp32 temporaries of the tile's size); its backward
recomputes each tile and accumulates the hidden states' gradient, and when the head trains (a full fine-tune:
lm_head, or the tied embedding) the head's weight gradient, in fp32 before casting it to the weight's dtype.
So the loss step holds FUSED_TILE_COPIES (CPU_FUSED_TILE_COPIES on a CPU) tiles, (4 + 2·16-bit) bytes per token
and hidden unit, and a full fine-tune's vocab x hidden gradient at 4 bytes plus its cast, all while the layers'
activations are alive (measured: tests/fixtures/training-memory/cpu-sft.json and cuda-h200-sft.json).
transformers' own loss (`model(labels=...)`, bench/train_memory_probe.py's default loop) materialises the fp32
logits instead, three to four copies of them, which this estimate no longer describes.

Gradients and activations peak at different moments when every optimizer step drops the gradients
(`zero_grad(set_to_none=True)`, transformers' Trainer) and there is no accumulation: activations are all alive
at the start of the backward pass, gradients only at its end. The peak then counts the larger of the two; with
gradient accumulation the earlier micro-batches' gradients stay while activations build, so both count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from deployments.sizing import memory
from deployments.sizing.errors import SizingError, gettext_noop
from deployments.sizing.params import Architecture, ParamBreakdown, count_parameters, parse_architecture

METHODS = ("full", "lora", "qlora")
TRAINING_PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("cuda", "cpu")
ATTENTIONS = ("sdpa", "flash", "eager")
DEFAULT_LORA_TARGETS = ("q_proj", "v_proj")
# peft's shorthand for every linear of the decoder blocks (not the lm_head).
ALL_LINEAR = "all-linear"

ADAMW_MOMENTS = 2  # exp_avg and exp_avg_sq, each in its parameter's dtype (torch's AdamW, fused or not)
LORA_ADAPTER_BYTES = 4  # peft's get_peft_model upcasts bf16/fp16 adapters to fp32 (autocast_adapter_dtype=True)
QLORA_ADAPTER_BYTES = 2  # TRL's SFTTrainer casts a quantized model's adapters to bf16
QLORA_DENSE_BYTES = 4  # prepare_model_for_kbit_training upcasts every non-4-bit parameter to fp32
QLORA_FORMAT = memory.WeightFormat("int4", "bitsandbytes-nf4", 4)
# TRL 1.16's fused LM head (trl/kernels/chunked_logprob.py): tiles of TOKEN_CHUNK_SIZE tokens x
# _CHUNKED_LOGPROB_CHUNK_SIZE vocabulary entries.
FUSED_TILE_TOKENS = 4096
FUSED_TILE_VOCAB = 32768
# Tiles alive at once. CUDA: the Triton kernels rewrite one tile buffer in place; with it the four H200 runs of the
# program on a 1B Llama (tests/fixtures/training-memory/cuda-h200-sft.json) are within 7 % (LoRA without
# checkpointing the farthest, -6.9 %). CPU: the torch fallback makes fp32 temporaries of the tile (z - max, exp,
# e·z, the top-1 mask) in its forward and its backward, and glibc keeps much of them; 7 tiles with the retention
# below put the eight CPU runs of the program on a 134M Llama (cpu-sft.json) within 9.1 %.
FUSED_TILE_COPIES = 1.0
CPU_FUSED_TILE_COPIES = 7.0
# glibc's malloc keeps freed activation memory in its heaps (its mmap threshold grows with the tensors freed), so
# a CPU process's resident peak exceeds what tensors hold by this share of the activations (fitted together with
# CPU_FUSED_TILE_COPIES to the program's peaks, tests/fixtures/training-memory/cpu-sft.json). GPUs use PyTorch's
# caching allocator, which placement covers with TRAINING_KEEP_FREE_FRACTION instead.
CPU_ALLOCATOR_RETENTION = 0.45
# PyTorch's caching allocator rounds and fragments: placement leaves this share of each GPU untouched.
TRAINING_KEEP_FREE_FRACTION = 0.05


@dataclass(frozen=True)
class TrainingSetup:
    """What the fine-tune form asks that changes memory. `micro_batch_size` sequences of `max_seq_len` tokens
    per forward pass on each device; `gradient_accumulation` micro-batches per optimizer step."""

    method: str = "lora"
    precision: str = "bf16"
    micro_batch_size: int = 1
    max_seq_len: int = 2048
    gradient_accumulation: int = 1
    gradient_checkpointing: bool = False
    lora_r: int = 16
    lora_target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS
    device: str = "cuda"
    attention: str = "sdpa"

    @property
    def tokens(self) -> int:
        """Tokens in one forward pass on one device."""
        return self.micro_batch_size * self.max_seq_len

    @property
    def trains_in_fp32(self) -> bool:
        """The fine-tune program trains in fp32 when asked to, and on a CPU whatever was asked."""
        return self.precision == "fp32" or self.device == "cpu"

    @property
    def activation_bytes(self) -> int:
        """Bytes of one activation element (and of a weight in the training precision): fp32 doubles 16-bit."""
        return 4 if self.trains_in_fp32 else 2


@dataclass(frozen=True)
class Note:
    """A sentence marked for translation with its values apart (shown in the reader's language)."""

    template: str
    params: dict[str, Any] = field(default_factory=dict)

    def text(self, translate: Callable[[str], str] = str) -> str:
        """The sentence through `translate` (Django's gettext in the console)."""
        template = translate(self.template)
        return template % self.params if self.params else template

    def __str__(self) -> str:
        return self.text()


@dataclass(frozen=True)
class TrainingEstimate:
    """Bytes per device for one training setup. `total` is the peak; see the module docstring for the phases."""

    setup: TrainingSetup
    params: int
    trainable_params: int
    weights: int
    gradients: int
    optimizer: int
    master: int  # always 0: the program keeps no fp32 master copy (kept for the form and the API)
    activations: int
    activations_per_token_per_layer: int
    overhead: int
    total: int
    peak_phase: str  # "backward" (activations dominate) or "end of backward" (gradients do)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready breakdown for the form and the API."""
        keys = ("params", "trainable_params", "weights", "gradients", "optimizer", "master", "activations")
        out: dict[str, Any] = {key: getattr(self, key) for key in keys}
        out.update(
            activations_per_token_per_layer=self.activations_per_token_per_layer,
            overhead=self.overhead,
            total=self.total,
            peak_phase=self.peak_phase,
            per_device=self.setup.device,
            assumption="data parallel: every device holds a full copy (no ZeRO/FSDP)",
        )
        return out


def _check_setup(setup: TrainingSetup) -> None:
    choices = (
        ("method", METHODS),
        ("precision", TRAINING_PRECISIONS),
        ("device", DEVICES),
        ("attention", ATTENTIONS),
    )
    for name, allowed in choices:
        if getattr(setup, name) not in allowed:
            raise SizingError(
                gettext_noop("unknown %(name)s %(value)r; use one of %(choices)s"),
                name,
                name=name,
                value=getattr(setup, name),
                choices=", ".join(allowed),
            )
    for name in ("micro_batch_size", "max_seq_len", "gradient_accumulation"):
        if int(getattr(setup, name)) < 1:
            raise SizingError(gettext_noop("%(name)s must be at least 1"), name, name=name)
    if setup.method != "full" and setup.lora_r < 1:
        raise SizingError(gettext_noop("the LoRA rank r must be at least 1"), "lora_r")
    if setup.method == "qlora" and setup.device != "cuda":
        raise SizingError(
            gettext_noop(
                "QLoRA needs a CUDA GPU: bitsandbytes' 4-bit weights do not run on a CPU host; "
                "choose LoRA (or a full fine-tune) here, or a host with a CUDA GPU"
            ),
            "method",
        )


def _short_name(group_name: str) -> str:
    return group_name.rsplit(".", 1)[-1]


def lora_targets(breakdown: ParamBreakdown, targets: Sequence[str]) -> list[str]:
    """The decoder linears (short names such as q_proj) an adapter attaches to; `all-linear` means every one."""
    names = list(dict.fromkeys(_short_name(group.name) for group in breakdown.linears))
    if ALL_LINEAR in targets:
        return names
    chosen = [name for name in names if name in set(targets)]
    unknown = [t for t in targets if t not in names]
    if unknown or not chosen:
        raise SizingError(
            gettext_noop("no linear layer named %(unknown)s in this model; its linear layers are %(names)s"),
            "lora_target_modules",
            unknown=", ".join(unknown) or ", ".join(targets) or "-",
            names=", ".join(names),
        )
    return chosen


def lora_trainable_params(breakdown: ParamBreakdown, r: int, targets: Sequence[str]) -> int:
    """LoRA's parameters: A (in x r) and B (r x out) on every targeted linear, r·(in + out) each."""
    chosen = set(lora_targets(breakdown, targets))
    return sum(
        r * (g.in_features + g.out_features) * g.count for g in breakdown.linears if _short_name(g.name) in chosen
    )


def activation_elements_per_token_per_layer(arch: Architecture, setup: TrainingSetup, trained: set[str]) -> int:
    """Elements one decoder layer keeps per token for the backward pass (see the module docstring).

    `trained` holds the short names of linears whose input must be kept: all of them in a full fine-tune, the
    LoRA targets otherwise."""
    h, kv, i = arch.hidden_size, arch.num_kv_heads * arch.head_dim, arch.intermediate_size
    q = arch.num_heads * arch.head_dim
    elements = 2 * h + q + 2 * kv + q + 3 * i  # norm inputs, rotated q, k, v, attention output, gate/SiLU/up
    if setup.method == "full":
        elements += 2 * h  # the normalized tensors, kept for the norm weights' gradients
    if trained & {"q_proj", "k_proj", "v_proj"}:
        elements += h
    if trained & {"gate_proj", "up_proj"}:
        elements += h
    if "down_proj" in trained:
        elements += i
    if setup.method != "full":
        elements += setup.lora_r * len(trained)  # each adapter's A output, kept for B
    return elements


def _eager_bytes_per_token_per_layer(arch: Architecture, setup: TrainingSetup) -> int:
    """Eager attention keeps the fp32 softmax (a·s per token) and, under 16-bit, its cast for the value matmul."""
    if setup.attention != "eager":
        return 0
    per_score = 4 + (setup.activation_bytes if setup.activation_bytes < 4 else 0)
    return arch.num_heads * setup.max_seq_len * per_score


def _weights(breakdown: ParamBreakdown, setup: TrainingSetup, adapter_params: int) -> int:
    """The model as the program loads it: base in the training precision (QLoRA: 4-bit linears, the rest fp32)."""
    if setup.method == "qlora":
        base = memory.weight_bytes(breakdown, QLORA_FORMAT)  # 4-bit linears, 16-bit embeddings and norms
        base += breakdown.dense_params * (QLORA_DENSE_BYTES - memory.DENSE_BYTES)
        return base + adapter_params * QLORA_ADAPTER_BYTES
    return breakdown.total * setup.activation_bytes + adapter_params * LORA_ADAPTER_BYTES


def _trainable_width(setup: TrainingSetup) -> int:
    """Bytes of one trainable parameter, hence of its gradient and of each AdamW moment."""
    if setup.method == "full":
        return setup.activation_bytes
    return QLORA_ADAPTER_BYTES if setup.method == "qlora" else LORA_ADAPTER_BYTES


def _fused_loss_head_bytes(arch: Architecture, setup: TrainingSetup) -> int:
    """What TRL's fused LM head holds during the loss's backward pass (see the module docstring)."""
    act = setup.activation_bytes
    cast = act if act < 4 else 0  # an fp32 accumulator cast to a 16-bit dtype is a second tensor
    copies = FUSED_TILE_COPIES if setup.device == "cuda" else CPU_FUSED_TILE_COPIES
    tile = min(setup.tokens, FUSED_TILE_TOKENS) * min(arch.vocab_size, FUSED_TILE_VOCAB) * act * copies
    # The scored tokens' hidden states (a copy) and their fp32 gradient with its cast.
    hidden = setup.tokens * arch.hidden_size * (act + 4 + cast)
    # A full fine-tune trains the head (lm_head or the tied embedding): its fp32 gradient and the cast.
    head = arch.vocab_size * arch.hidden_size * (4 + cast) if setup.method == "full" else 0
    return math.ceil(tile + hidden + head)


def estimate_training(config: dict[str, Any], setup: TrainingSetup) -> TrainingEstimate:
    """Peak bytes per device of training `config`'s model with `setup` (raises SizingError on a bad setup)."""
    _check_setup(setup)
    arch = parse_architecture(config)
    breakdown = count_parameters(config)
    if setup.method == "full":
        trainable, adapter = breakdown.total, 0
        trained = {_short_name(g.name) for g in breakdown.linears}
    else:
        trainable = adapter = lora_trainable_params(breakdown, setup.lora_r, setup.lora_target_modules)
        trained = set(lora_targets(breakdown, setup.lora_target_modules))
    act, width = setup.activation_bytes, _trainable_width(setup)
    weights = _weights(breakdown, setup, adapter)
    gradients = trainable * width
    optimizer = trainable * width * ADAMW_MOMENTS
    per_layer = activation_elements_per_token_per_layer(arch, setup, trained) * act
    per_layer += 2 * arch.hidden_size * (4 - act)  # RMSNorm keeps its two inputs upcast to fp32
    per_layer += _eager_bytes_per_token_per_layer(arch, setup)
    tokens, layers = setup.tokens, arch.num_layers
    if setup.gradient_checkpointing:
        layer_bytes = tokens * (layers * arch.hidden_size * act + per_layer)
    else:
        layer_bytes = tokens * layers * per_layer
    activations = layer_bytes + _fused_loss_head_bytes(arch, setup)
    # transformers' Trainer defaults to the fused AdamW (torch >= 2.8): no parameter-sized temporaries at the step.
    cpu_retention = math.ceil(CPU_ALLOCATOR_RETENTION * activations)
    overhead = memory.CUDA_CONTEXT_BYTES if setup.device == "cuda" else cpu_retention
    static = weights + optimizer + overhead
    # The end of the backward pass: every gradient, and the activations the first layer still holds.
    tail = layer_bytes if setup.gradient_checkpointing else tokens * per_layer
    if setup.gradient_accumulation > 1:
        moving, phase = gradients + activations, "backward"
    else:
        moving, phase = max(
            (activations, "backward"),
            (gradients + tail, "end of backward"),
            key=lambda option: option[0],
        )
    return TrainingEstimate(
        setup=setup,
        params=breakdown.total,
        trainable_params=trainable,
        weights=weights,
        gradients=gradients,
        optimizer=optimizer,
        master=0,
        activations=activations,
        activations_per_token_per_layer=per_layer,
        overhead=overhead,
        total=static + moving,
        peak_phase=phase,
    )


def changed(setup: TrainingSetup, **changes: Any) -> TrainingSetup:
    """A copy of `setup` with `changes` (for "what would fit" suggestions)."""
    return replace(setup, **changes)

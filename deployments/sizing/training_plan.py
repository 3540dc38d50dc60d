"""The fine-tune form's verdict: the training estimate against the GPUs the placement engine picks, and, when it
does not fit, why and what would (pure: plain data in, no Django).

Suggestions come in this order, each estimated and placed like the request: gradient checkpointing, LoRA or
QLoRA instead of the method asked, a smaller micro batch with more accumulation (the same tokens per optimizer
step), a shorter max sequence length; when no single change fits, the same changes together, in that order, as
far as needed. More GPUs are never suggested as a fix: under plain data parallel each
GPU holds a full copy, so they add speed, not memory per GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from deployments.inventory.placement import Placement, PlacementError, Requirement, place
from deployments.sizing.errors import gettext_noop
from deployments.sizing.plan import HostCapacity, _host_state, format_gb
from deployments.sizing.training import (
    TRAINING_KEEP_FREE_FRACTION,
    Note,
    TrainingEstimate,
    TrainingSetup,
    changed,
    estimate_training,
)

# Shortest max_seq_len the planner proposes: below it most instruction data no longer fits in one sequence.
MIN_SUGGESTED_SEQ_LEN = 256


@dataclass(frozen=True)
class Suggestion:
    """One change that lowers memory, with its peak per device and whether it fits where the request would run."""

    note: Note
    setup: TrainingSetup | None
    total: int | None
    fits: bool | None

    def as_dict(self, translate: Callable[[str], str] = str) -> dict[str, Any]:
        """JSON-ready form."""
        return {"text": self.note.text(translate), "total": self.total, "fits": self.fits}


@dataclass(frozen=True)
class TrainingVerdict:
    """Where a fine-tune would run and whether it fits; `fits` is None when nothing was given to check against."""

    estimate: TrainingEstimate
    fits: bool | None
    host: str | None = None
    gpu_indexes: tuple[int, ...] = ()
    explanation: str = ""
    reason: Note | None = None
    suggestions: list[Suggestion] = field(default_factory=list)

    def as_dict(self, translate: Callable[[str], str] = str) -> dict[str, Any]:
        """JSON-ready form for the form and the API."""
        return {
            "estimate": self.estimate.as_dict(),
            "fits": self.fits,
            "host": self.host,
            "gpu_indexes": list(self.gpu_indexes),
            "explanation": self.explanation,
            "reason": self.reason.text(translate) if self.reason else None,
            "suggestions": [s.as_dict(translate) for s in self.suggestions],
        }


@dataclass(frozen=True)
class _Target:
    """What a setup is checked against: GPU hosts through the engine, or one CPU host's memory."""

    inventory: list[HostCapacity]
    gpu_count: int
    preferred_hosts: tuple[str, ...]
    keep_free_fraction: float
    host_memory_bytes: int | None

    def place(self, estimate: TrainingEstimate) -> Placement | None:
        if estimate.setup.device == "cpu":
            return None
        states = [_host_state(h) for h in self.inventory if h.online and h.gpus]
        requirement = Requirement(
            memory_per_gpu=max(1, estimate.total),
            gpu_count=self.gpu_count,
            preferred_hosts=self.preferred_hosts,
            keep_free_fraction=self.keep_free_fraction,
        )
        try:
            return place(requirement, states)
        except PlacementError:
            return None

    def fits(self, estimate: TrainingEstimate) -> bool | None:
        if estimate.setup.device == "cpu":
            return None if self.host_memory_bytes is None else estimate.total <= self.host_memory_bytes
        return self.place(estimate) is not None

    def best_usable(self) -> int:
        """The most memory per GPU any `gpu_count` GPUs of one online host offer."""
        best = 0
        for host in self.inventory:
            if not host.online or len(host.gpus) < self.gpu_count:
                continue
            usable = sorted(
                (g.memory_free - int(self.keep_free_fraction * g.memory_total) for g in host.gpus), reverse=True
            )
            best = max(best, usable[self.gpu_count - 1])
        return max(0, best)


def _reason(estimate: TrainingEstimate, target: _Target) -> Note:
    need = format_gb(estimate.total)
    if estimate.setup.device == "cpu":
        return Note(
            gettext_noop("needs %(need)s GB of memory at its peak; the host has %(have)s GB"),
            {"need": need, "have": format_gb(target.host_memory_bytes or 0)},
        )
    if not any(h.online and h.gpus for h in target.inventory):
        return Note(gettext_noop("needs %(need)s GB per GPU; no online host has a GPU"), {"need": need})
    return Note(
        gettext_noop(
            "needs %(need)s GB per GPU at its peak; the most %(count)s GPU(s) on one host offer is %(usable)s GB each"
        ),
        {
            "need": need,
            "count": target.gpu_count,
            "usable": format_gb(target.best_usable()),
        },
    )


def _suggest(config: dict[str, Any], note: Note, setup: TrainingSetup, target: _Target) -> Suggestion:
    estimate = estimate_training(config, setup)
    return Suggestion(note, setup, estimate.total, target.fits(estimate))


def _first_fitting(config: dict[str, Any], setups: list[TrainingSetup], target: _Target) -> TrainingSetup | None:
    """The first of `setups` that fits, else the last (the smallest)."""
    for setup in setups:
        if target.fits(estimate_training(config, setup)):
            return setup
    return setups[-1] if setups else None


def _combined(config: dict[str, Any], setup: TrainingSetup, target: _Target) -> Suggestion:
    """The changes above applied one after another, in their order, until the run fits (or all are applied)."""
    steps = [changed(setup, gradient_checkpointing=True)]
    if setup.device == "cuda" and setup.method != "qlora":
        steps.append(
            changed(steps[-1], method="qlora", precision="bf16" if setup.precision == "fp32" else setup.precision)
        )
    elif setup.method == "full":
        steps.append(changed(steps[-1], method="lora"))
    size = steps[-1].micro_batch_size
    while size > 1:
        size //= 2
        accumulation = setup.gradient_accumulation * setup.micro_batch_size // size
        steps.append(changed(steps[-1], micro_batch_size=size, gradient_accumulation=accumulation))
    length = steps[-1].max_seq_len
    while length > MIN_SUGGESTED_SEQ_LEN:
        length = max(MIN_SUGGESTED_SEQ_LEN, length // 2)
        steps.append(changed(steps[-1], max_seq_len=length))
    chosen = _first_fitting(config, steps, target)
    note = Note(
        gettext_noop(
            "together: gradient checkpointing, method %(method)s, micro batch %(batch)s with gradient accumulation "
            "%(accumulation)s, max sequence length %(length)s"
        ),
        {
            "method": chosen.method,
            "batch": chosen.micro_batch_size,
            "accumulation": chosen.gradient_accumulation,
            "length": chosen.max_seq_len,
        },
    )
    return _suggest(config, note, chosen, target)


def suggestions(config: dict[str, Any], setup: TrainingSetup, target: _Target) -> list[Suggestion]:
    """What would lower the memory, in the order the module docstring gives."""
    out: list[Suggestion] = []
    if not setup.gradient_checkpointing:
        note = Note(gettext_noop("enable gradient checkpointing (slower by about a third, far fewer activations)"))
        out.append(_suggest(config, note, changed(setup, gradient_checkpointing=True), target))
    if setup.method == "full":
        note = Note(gettext_noop("train a LoRA adapter (r=%(r)s) instead of every weight"), {"r": setup.lora_r})
        out.append(_suggest(config, note, changed(setup, method="lora"), target))
    if setup.method != "qlora" and setup.device == "cuda":
        precision = "bf16" if setup.precision == "fp32" else setup.precision
        note = Note(gettext_noop("use QLoRA: 4-bit base weights with a LoRA adapter (r=%(r)s)"), {"r": setup.lora_r})
        out.append(_suggest(config, note, changed(setup, method="qlora", precision=precision), target))
    if setup.micro_batch_size > 1:
        smaller, size = [], setup.micro_batch_size
        while size > 1:
            size //= 2
            accumulation = setup.gradient_accumulation * setup.micro_batch_size // size
            smaller.append(changed(setup, micro_batch_size=size, gradient_accumulation=accumulation))
        chosen = _first_fitting(config, smaller, target)
        note = Note(
            gettext_noop("use a micro batch of %(batch)s with gradient accumulation %(accumulation)s (same batch)"),
            {"batch": chosen.micro_batch_size, "accumulation": chosen.gradient_accumulation},
        )
        out.append(_suggest(config, note, chosen, target))
    if setup.max_seq_len > MIN_SUGGESTED_SEQ_LEN:
        shorter, length = [], setup.max_seq_len
        while length > MIN_SUGGESTED_SEQ_LEN:
            length = max(MIN_SUGGESTED_SEQ_LEN, length // 2)
            shorter.append(changed(setup, max_seq_len=length))
        chosen = _first_fitting(config, shorter, target)
        note = Note(
            gettext_noop("shorten max sequence length to %(length)s tokens (longer rows are cut or refused)"),
            {"length": chosen.max_seq_len},
        )
        out.append(_suggest(config, note, chosen, target))
    if out and not any(s.fits for s in out):
        out.append(_combined(config, setup, target))
    if setup.device == "cuda":
        note = Note(
            gettext_noop(
                "more GPUs do not help here: under data parallel each GPU holds a full copy of the weights, "
                "gradients and optimizer states, so they speed training up without lowering memory per GPU"
            )
        )
        out.append(Suggestion(note, None, None, None))
    return out


def plan_training(
    config: dict[str, Any],
    setup: TrainingSetup,
    *,
    inventory: list[HostCapacity] | None = None,
    gpu_count: int = 1,
    preferred_hosts: Sequence[str] = (),
    host_memory_bytes: int | None = None,
    keep_free_fraction: float = TRAINING_KEEP_FREE_FRACTION,
) -> TrainingVerdict:
    """Estimate `setup` on `config`'s model and check it: on GPUs, `gpu_count` data-parallel replicas placed by the
    placement engine in `inventory` (`preferred_hosts` first); on a CPU host, against `host_memory_bytes`.
    Raises SizingError for a setup that cannot run at all (QLoRA on a CPU host, an unknown target module)."""
    estimate = estimate_training(config, setup)
    target = _Target(list(inventory or []), gpu_count, tuple(preferred_hosts), keep_free_fraction, host_memory_bytes)
    if setup.device == "cpu":
        fits = target.fits(estimate)
        if fits is not False:
            return TrainingVerdict(estimate, fits)
    elif inventory is None:
        return TrainingVerdict(estimate, None)
    elif (chosen := target.place(estimate)) is not None:
        return TrainingVerdict(estimate, True, chosen.host, chosen.gpu_indexes, chosen.explanation)
    return TrainingVerdict(
        estimate, False, reason=_reason(estimate, target), suggestions=suggestions(config, setup, target)
    )

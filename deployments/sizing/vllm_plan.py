"""Where a vLLM spec runs: vLLM's share of each GPU (deployments/sizing/vllm.py) placed by the one placement engine.

A GPU takes a vLLM server when its free memory covers gpu_memory_utilization of it with the server's CUDA context
and what vLLM keeps free beside it, and that share holds the weights, the activations, the runtime memory and one
sequence of max_model_len. Placement then reserves the share and the CUDA context, so no other server is placed
into memory vLLM takes. A spec no GPU of the inventory could take even empty is refused with the setting to
change; one that waits for busy GPUs is not.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from deployments.inventory.placement import PlacementError, Requirement, place
from deployments.sizing import memory, vllm, vllm_engine
from deployments.sizing.errors import SizingError, gettext_noop
from deployments.sizing.memory import WeightFormat
from deployments.sizing.plan import (
    MAX_SHARDS_SEARCHED,
    GpuCapacity,
    HostCapacity,
    MemoryEstimate,
    ModelShape,
    Placement,
    host_state,
    placement_for,
)
from deployments.sizing.vllm import VllmLimits, VllmMemory
from deployments.units import GB


@dataclass(frozen=True)
class Model:
    """What the vLLM arithmetic needs about one weight format of the model."""

    shape: ModelShape
    config: dict[str, Any]
    fmt: WeightFormat
    kv_dtype: int
    limits: VllmLimits

    @property
    def weights(self) -> int:
        """Bytes of all weights in this format (exact from the headers when stored so)."""
        if self.fmt == self.shape.stored and self.shape.stored_weight_bytes is not None:
            return self.shape.stored_weight_bytes
        return memory.weight_bytes(self.shape.breakdown, self.fmt)

    def on(self, gpu_total: int, num_shard: int, gpu_name: str = "") -> VllmMemory:
        """vLLM's arithmetic on `num_shard` GPUs of `gpu_total` bytes. A spec that leaves gpu_memory_utilization
        empty gets the default or, on a GPU too small for it (16 GB: the default's share, vLLM's CUDA context and
        what it keeps free exceed the card), the most that GPU gives: vLLM 0.34 fills no more than that anyway, so
        the plan and placement count what it will take instead of refusing the default."""
        mem = self._on(self.limits, gpu_total, num_shard, gpu_name)
        if gpu_total <= 0:  # sizes only (no inventory): no GPU whose share could be adapted
            return mem
        most = mem.most_utilization
        if self.limits.gpu_memory_utilization is None and MIN_UTILIZATION <= most < mem.gpu_memory_utilization:
            mem = self._on(replace(self.limits, gpu_memory_utilization=most), gpu_total, num_shard, gpu_name)
        return mem

    def _on(self, limits: VllmLimits, gpu_total: int, num_shard: int, gpu_name: str) -> VllmMemory:
        return vllm.vllm_memory(
            self.shape.arch,
            self.config,
            self.weights,
            kv_dtype=self.kv_dtype,
            num_shard=num_shard,
            gpu_total=gpu_total,
            gpu_name=gpu_name,
            limits=limits,
        )

    def on_gpus(self, gpus: Sequence[GpuCapacity]) -> VllmMemory:
        """On this set: every GPU gets as many blocks as the smallest holds."""
        smallest = min(gpus, key=lambda g: g.memory_total)
        return self.on(smallest.memory_total, len(gpus), smallest.name)


def shard_counts(model: Model, limit: int = MAX_SHARDS_SEARCHED) -> list[int]:
    """Tensor-parallel sizes vLLM accepts: they divide the attention heads, and the KV heads divide them or they
    divide the KV heads (vLLM replicates KV heads over the extra GPUs)."""
    arch = model.shape.arch
    kv = max(1, arch.num_kv_heads)
    return [s for s in range(1, limit + 1) if arch.num_heads % s == 0 and (kv % s == 0 or s % kv == 0)]


@dataclass
class VllmRow:
    """One weight format planned for vLLM: the arithmetic, whether and where it runs, and why not."""

    memory: VllmMemory | None
    fits: bool | None
    gpu_set: Placement | None
    refusal: SizingError | None = None  # a setting vLLM refuses on these GPUs even when they are empty
    notes: tuple[SizingError, ...] = ()  # why it does not run now (busy GPUs), or what to watch
    reserve_bytes: int | None = None  # what placement reserves on each GPU of the set (the largest GPU's)

    def estimate(self, model: Model, num_shard: int) -> MemoryEstimate:
        """The row's figures in the planner's common shape (per GPU: what placement reserves)."""
        per_token = vllm_engine.kv_bytes_per_token(model.shape.arch, model.kv_dtype, 1)
        mem = self.memory
        if mem is None:  # no GPU to size the share against: weights, activations and runtime only
            mem = model.on(0, num_shard)
            return MemoryEstimate(
                model.fmt, num_shard, model.weights, per_token, 0, mem.non_torch_bytes, mem.activation_bytes,
                mem.non_kv_bytes + mem.outside_bytes,
            )  # fmt: skip
        return MemoryEstimate(
            model.fmt,
            mem.num_shard,
            model.weights,
            per_token,
            max(0, mem.kv_cache_bytes) * mem.num_shard,
            mem.non_torch_bytes + mem.outside_bytes,
            mem.activation_bytes,
            self.reserve_bytes or max(mem.footprint_bytes, mem.non_kv_bytes + mem.outside_bytes),
        )


def more_gpus(model: Model, gpu: GpuCapacity, beyond: int) -> int | None:
    """The fewest GPUs like `gpu`, more than `beyond`, whose share holds the model and one sequence."""
    for count in shard_counts(model):
        if count > beyond and model.on(gpu.memory_total, count, gpu.name).fits:
            return count
    return None


MIN_UTILIZATION = 0.05  # the smallest gpu_memory_utilization a spec may ask for (DeploymentSpec's validator)


def start_refusal(mem: VllmMemory) -> SizingError | None:
    """A share that does not fit the GPU even empty, beside vLLM's CUDA context and what it keeps free."""
    if mem.gpu_memory_utilization <= mem.most_utilization:
        return None
    if mem.most_utilization < MIN_UTILIZATION:  # no share would do: the GPU itself is too small
        return SizingError(
            gettext_noop(
                "A %(gpu)s GB GPU is too small for vLLM: its CUDA context and the %(kept)s GB it keeps free beside "
                "its KV cache leave no share for the model. Choose larger GPUs."
            ),
            "gpu_memory_utilization",
            gpu=_gb(mem.gpu_total_bytes),
            kept=_gb(mem.kept_free_bytes),
        )
    return SizingError(
        gettext_noop(
            "gpu_memory_utilization %(utilization)s asks for %(share)s GB of a %(gpu)s GB GPU; with vLLM's CUDA "
            "context and the %(kept)s GB it keeps free beside its KV cache, that is more than the GPU has even "
            "empty, and vLLM would not get it: use at most %(most)s."
        ),
        "gpu_memory_utilization",
        utilization=f"{mem.gpu_memory_utilization:g}",
        share=_gb(mem.share_bytes),
        gpu=_gb(mem.gpu_total_bytes),
        kept=_gb(mem.kept_free_bytes),
        most=f"{mem.most_utilization:g}",
    )


def on_selected(model: Model, gpus: list[GpuCapacity]) -> VllmRow:
    """The GPUs a person chose: vLLM's arithmetic on them, its refusals, and whether each has the share free."""
    mem = model.on_gpus(gpus)
    utilization = mem.gpu_memory_utilization
    refusal = start_refusal(mem)
    if refusal is None and not mem.fits:
        refusal = mem.refusal(more_gpus(model, min(gpus, key=lambda g: g.memory_total), len(gpus)))
    notes = []
    if len(gpus) not in shard_counts(model, len(gpus)):
        notes.append(_shard_note(model, len(gpus)))
    for gpu in gpus:
        need = vllm_engine.footprint(gpu.memory_total, utilization) + mem.kept_free_bytes
        if gpu.memory_free < need:
            notes.append(
                SizingError(
                    gettext_noop(
                        "GPU %(index)s has %(free)s GB free; vLLM needs %(need)s GB free on it at start "
                        "(gpu_memory_utilization %(utilization)s of %(gpu)s GB, its CUDA context and the memory it "
                        "keeps free)."
                    ),
                    "gpu_indexes",
                    index=gpu.index,
                    free=_gb(gpu.memory_free),
                    need=_gb(need),
                    utilization=f"{utilization:g}",
                    gpu=_gb(gpu.memory_total),
                )
            )
    fits = refusal is None and not notes
    gpu_set = _gpu_set("selected", gpus, utilization) if fits else None
    return VllmRow(mem, fits, gpu_set, refusal, tuple(notes), reserve_bytes(gpus, utilization))


def reserve_bytes(gpus: Sequence[GpuCapacity], utilization: float) -> int:
    """What placement reserves on each GPU of the set: the share, CUDA context and graphs of the largest."""
    return max(vllm_engine.footprint(g.memory_total, utilization) for g in gpus)


def _gpu_set(host: str, gpus: list[GpuCapacity], utilization: float) -> Placement:
    """The chosen set, with what each GPU keeps free beside the server."""
    chosen = placement_for(host, gpus)
    chosen.usable_bytes_per_gpu = min(g.memory_free - vllm_engine.footprint(g.memory_total, utilization) for g in gpus)
    return chosen


def _shard_note(model: Model, count: int) -> SizingError:
    arch = model.shape.arch
    return SizingError(
        gettext_noop(
            "vLLM cannot split %(heads)s attention heads and %(kv)s KV heads over %(count)s GPUs; "
            "valid tensor-parallel sizes: %(valid)s."
        ),
        "num_shard",
        heads=arch.num_heads,
        kv=arch.num_kv_heads,
        count=count,
        valid=", ".join(map(str, shard_counts(model, 16))),
    )


def _classes(model: Model, hosts: list[HostCapacity]) -> dict[tuple[int, int], list[HostCapacity]]:
    """Hosts split by vLLM's batch defaults of their GPUs (they set the activation estimate)."""
    classes: dict[tuple[int, int], dict[str, list[GpuCapacity]]] = defaultdict(lambda: defaultdict(list))
    for host in hosts:
        for gpu in host.gpus:
            classes[vllm_engine.batch_defaults(gpu.memory_total, gpu.name)][host.name].append(gpu)
    return {key: [replace(h, gpus=found[h.name]) for h in hosts if found.get(h.name)] for key, found in classes.items()}


def _place(
    model: Model, hosts: list[HostCapacity], count: int, preferred: Sequence[str]
) -> tuple[str, list[GpuCapacity]] | None:
    """The host and GPUs placement chooses for `count` shards, trying each class of GPU; a preferred host, then
    smaller GPUs win (keeping big ones free, as placement's best fit does)."""
    found = []
    for group in _classes(model, hosts).values():
        sample = group[0].gpus[0]
        mem = model.on(sample.memory_total, count, sample.name)
        requirement = Requirement(
            memory_per_gpu=max(1, mem.non_kv_bytes + (mem.blocks_per_sequence + mem.null_blocks) * mem.block_bytes),
            gpu_count=count,
            preferred_hosts=tuple(preferred),
            reserve_fraction=mem.gpu_memory_utilization,
            reserve_base=vllm_engine.DRIVER_RESERVED_BYTES,
            start_overhead=mem.outside_bytes + mem.kept_free_bytes,
        )
        try:
            chosen = place(requirement, [host_state(h) for h in group])
        except PlacementError:
            continue
        host = next(h for h in group if h.name == chosen.host)
        gpus = [g for g in host.gpus if g.index in chosen.gpu_indexes]
        on_them = model.on_gpus(gpus)
        if on_them.most_utilization >= on_them.gpu_memory_utilization:
            found.append((host.name, gpus))
    if not found:
        return None
    return min(found, key=lambda pick: (pick[0] not in preferred, pick[1][0].memory_total))


def in_inventory(
    model: Model, hosts: list[HostCapacity], num_shard: int | None, preferred: Sequence[str] = ()
) -> tuple[VllmRow, str | None]:
    """The fewest GPUs of one online host that take the server, and their host; else the refusal (nothing in the
    inventory could take it even empty) or the note that the GPUs that could are busy."""
    most = max(len(h.gpus) for h in hosts)
    counts = [num_shard] if num_shard else shard_counts(model, most)
    for count in counts:
        if count > most:
            continue
        picked = _place(model, hosts, count, preferred)
        if picked is not None:
            host, gpus = picked
            mem = model.on_gpus(gpus)
            share = mem.gpu_memory_utilization
            row = VllmRow(mem, True, _gpu_set(host, gpus, share), reserve_bytes=reserve_bytes(gpus, share))
            return row, host
    return _no_fit(model, hosts, num_shard, most), None


def _no_fit(model: Model, hosts: list[HostCapacity], num_shard: int | None, most: int) -> VllmRow:
    biggest = max((g for h in hosts for g in h.gpus), key=lambda g: g.memory_total)
    counts = [num_shard] if num_shard else shard_counts(model, most) or [1]
    # The fewest GPUs of the biggest kind that would take it empty; with none, the most the inventory offers.
    mem = next((m for c in counts if (m := model.on(biggest.memory_total, c, biggest.name)).fits), None)
    if mem is None or start_refusal(mem) is not None:
        mem = mem or model.on(biggest.memory_total, counts[-1], biggest.name)
        refusal = start_refusal(mem) or mem.refusal(more_gpus(model, biggest, mem.num_shard))
        return VllmRow(mem, False, None, refusal)
    busy = SizingError(
        gettext_noop(
            "No online host has %(count)s GPU(s) with gpu_memory_utilization %(utilization)s of their memory free "
            "(%(share)s GB of each %(gpu)s GB GPU, with vLLM's CUDA context beside it): the GPUs that could take it "
            "are reserved by other servers."
        ),
        "artifact",
        count=mem.num_shard,
        utilization=f"{model.limits.utilization:g}",
        share=_gb(mem.share_bytes),
        gpu=_gb(biggest.memory_total),
    )
    return VllmRow(mem, False, None, None, (busy,))


def _gb(value: int) -> str:
    return f"{value / GB:.1f}"

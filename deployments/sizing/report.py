"""`size_model`: the one entry point the page, the API and `manage.py size_model` share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deployments.sizing import memory, vllm_plan
from deployments.sizing import vllm as vllm_memory
from deployments.sizing.errors import SizingError
from deployments.sizing.memory import WeightFormat
from deployments.sizing.metadata import ModelMetadata
from deployments.sizing.plan import (
    KEEP_FREE_FRACTION,
    GpuCapacity,
    HostCapacity,
    ModelShape,
    TokenBudget,
    choose_gpus,
    estimate,
    format_gb,
    gpus_needed,
    model_shape,
    placement_for,
    token_budget,
    valid_shard_counts,
)
from deployments.sizing.result import PrecisionRow, SizingReport
from deployments.sizing.vllm import VllmLimits

# Quality order for "use X instead" suggestions: the first lower-memory format that fits wins.
_QUALITY = ("fp32", "bf16", "fp16", "fp8", "int8", "int4")
# --quantize values that only describe how a checkpoint is already stored.
_PREQUANTIZED_ONLY = ("awq", "gptq", "marlin", "exl2", "compressed-tensors")
# Table rows vLLM has no way to load: EETQ (and 8-bit bitsandbytes at load; vLLM's in-flight one is 4-bit).
_NOT_IN_VLLM = ("eetq", "bitsandbytes")


def _family(precision: str) -> str:
    """bf16 and fp16 take the same bytes: one table row stands for both."""
    return "16-bit" if precision in ("bf16", "fp16") else precision


def _primary_format(
    shape: ModelShape, quantize: str | None, config: dict[str, Any], warnings: list[str], server: str = "TGI"
) -> WeightFormat:
    if not quantize:
        return shape.stored
    if server == "vLLM":
        wanted = vllm_memory.quantize_format(quantize, config, shape.stored)
    else:
        wanted = memory.quantize_format(quantize, config)
    if shape.stored.method and wanted != shape.stored:
        # The server reads quantization_config itself; another quantization (or dtype) cannot re-encode these.
        warnings.append(
            f"the checkpoint is stored as {shape.stored.label}; {server} reads its quantization_config, "
            f"so {quantize!r} does not apply and it is planned as {shape.stored.label}"
        )
        return shape.stored
    if wanted.method in _PREQUANTIZED_ONLY and not shape.stored.method:
        # TGI loads AWQ/GPTQ/EXL2/Marlin weights as they are stored; it does not produce them from 16-bit weights.
        warnings.append(
            f"--quantize {wanted.method} needs a checkpoint already quantized that way; this one is "
            f"{shape.stored.label}: use a {wanted.label} repo, or bitsandbytes-nf4 to quantize at load"
        )
    return wanted


def _row_note(fmt: WeightFormat, shape: ModelShape) -> str:
    if fmt == shape.stored:
        return "as stored"
    # AWQ/GPTQ/EXL2 need weights quantized ahead of time; fp8, EETQ and bitsandbytes quantize 16-bit weights at load.
    prequantized = fmt.method in _PREQUANTIZED_ONLY
    if shape.stored.method:
        if fmt.method is None:
            return "needs the unquantized checkpoint"
        if prequantized:
            return f"needs a {fmt.label} checkpoint"
        return f"needs the unquantized checkpoint with --quantize {fmt.tgi_quantize}"
    if fmt.method is None:
        return f"--dtype {'float16' if fmt.precision == 'fp16' else 'bfloat16'}"
    if prequantized:
        return "needs an AWQ or GPTQ checkpoint; --quantize bitsandbytes-nf4 quantizes on the fly"
    return f"--quantize {fmt.tgi_quantize}"


def _row_formats(
    precisions: Sequence[str], primary: WeightFormat, shape: ModelShape, config: dict, vllm: bool = False
) -> list[WeightFormat]:
    qc = config.get("quantization_config")
    formats: list[WeightFormat] = []
    for precision in precisions:
        if precision not in memory.PRECISIONS:
            raise SizingError(f"unknown precision {precision!r}; use {', '.join(memory.PRECISIONS)}", "precisions")
        if _family(precision) == _family(primary.precision):
            fmt = primary
        elif _family(precision) == _family(shape.stored.precision):
            fmt = shape.stored
        else:
            fmt = memory.precision_format(precision, qc)
            if vllm and fmt.method in _NOT_IN_VLLM:
                continue
        if fmt not in formats:
            formats.append(fmt)
    if primary not in formats:
        formats.insert(0, primary)
    return formats


def _plan_row(
    fmt: WeightFormat,
    shape: ModelShape,
    budget: TokenBudget,
    kv_dtype: int,
    gpus: list[GpuCapacity] | None,
    hosts: list[HostCapacity] | None,
    num_shard: int | None,
    preferred_hosts: Sequence[str] = (),
    keep_free_fraction: float = KEEP_FREE_FRACTION,
) -> PrecisionRow:
    stored = fmt == shape.stored
    note = _row_note(fmt, shape)
    if gpus:
        est = estimate(shape, fmt, budget, len(gpus), kv_dtype)
        valid = len(gpus) in valid_shard_counts(shape.arch, fmt, len(gpus))
        fits = valid and est.per_gpu_bytes <= min(g.usable_bytes for g in gpus)
        return PrecisionRow(fmt, est, fits, placement_for("selected", gpus) if fits else None, stored, note)
    if hosts:
        found = choose_gpus(shape, fmt, budget, kv_dtype, hosts, num_shard, preferred_hosts, keep_free_fraction)
        if found:
            return PrecisionRow(fmt, found[1], True, found[0], stored, note)
        largest = max(g.usable_bytes for h in hosts for g in h.gpus)
        s = num_shard or gpus_needed(shape, fmt, budget, kv_dtype, largest) or 1
        return PrecisionRow(fmt, estimate(shape, fmt, budget, s, kv_dtype), False, None, stored, note)
    return PrecisionRow(fmt, estimate(shape, fmt, budget, num_shard or 1, kv_dtype), None, None, stored, note)


def _vllm_row(
    model: vllm_plan.Model,
    primary: bool,
    gpus: list[GpuCapacity] | None,
    hosts: list[HostCapacity] | None,
    num_shard: int | None,
    preferred_hosts: Sequence[str] = (),
) -> PrecisionRow:
    """One format planned for vLLM. The primary format's refusal is the answer, naming the setting to change."""
    if gpus:
        row, count = vllm_plan.on_selected(model, gpus), len(gpus)
    elif hosts:
        row = vllm_plan.in_inventory(model, hosts, num_shard, preferred_hosts)[0]
        count = row.memory.num_shard if row.memory else num_shard or 1
    else:
        row, count = vllm_plan.VllmRow(None, None, None), num_shard or 1
    if row.refusal is not None and primary:
        raise row.refusal
    fits = False if row.refusal is not None else row.fits
    stored = model.fmt == model.shape.stored
    est = row.estimate(model, count)
    note = _vllm_note(model.fmt, model.shape)
    return PrecisionRow(model.fmt, est, fits, row.gpu_set, stored, note, row.memory, row.notes)


def _vllm_note(fmt: WeightFormat, shape: ModelShape) -> str:
    if fmt == shape.stored:
        return "as stored"
    if fmt.method is None:
        return "needs the unquantized checkpoint" if shape.stored.method else f"--dtype {fmt.precision}"
    if shape.stored.method or fmt.method in _PREQUANTIZED_ONLY:
        return f"needs a {fmt.label} checkpoint"
    return f"--quantization {'bitsandbytes' if 'bitsandbytes' in fmt.method else fmt.method}"


def _alternative(rows: list[PrecisionRow], primary: PrecisionRow) -> PrecisionRow | None:
    """The highest-quality format that fits and takes less memory than the primary one."""
    smaller = [r for r in rows if r.fits and r.estimate.weight_bytes < primary.estimate.weight_bytes]
    return min(smaller, key=lambda r: _QUALITY.index(r.fmt.precision), default=None)


def _warnings(
    report_rows: list[PrecisionRow],
    primary: PrecisionRow,
    shape: ModelShape,
    budget: TokenBudget,
    kv_dtype: int,
    gpus: list[GpuCapacity] | None,
    hosts: list[HostCapacity] | None,
) -> list[str]:
    out: list[str] = []
    est, label = primary.estimate, primary.fmt.label
    valid = valid_shard_counts(shape.arch, primary.fmt)
    if est.num_shard not in valid_shard_counts(shape.arch, primary.fmt, est.num_shard):
        kv = f" and {shape.arch.num_kv_heads} KV heads" if shape.arch.num_kv_heads > 1 else ""
        if primary.fmt.shardable:
            why = f"it does not divide the model's {shape.arch.num_heads} attention heads{kv}"
        else:
            why = f"TGI cannot shard {label}"
        out.append(f"num_shard {est.num_shard} is not allowed: {why}; valid shard counts: {', '.join(map(str, valid))}")
    memory_short = not gpus or est.per_gpu_bytes > min(g.usable_bytes for g in gpus)
    if primary.fits is False and memory_short:
        alt = _alternative(report_rows, primary)
        if gpus:
            usable = min(g.usable_bytes for g in gpus)
            size = max(g.memory_total for g in gpus)
            selected = f"{len(gpus)} x {format_gb(size)} GB selected ({format_gb(usable)} GB usable each)"
        else:
            usable = max(g.usable_bytes for h in hosts or [] for g in h.gpus)
            selected = f"no online host has {est.num_shard} GPUs with {format_gb(est.per_gpu_bytes)} GB free each"
        options = []
        if alt is not None:
            options.append(f"{alt.fmt.label} ({format_gb(alt.estimate.total_bytes)} GB)")
        count = gpus_needed(shape, primary.fmt, budget, kv_dtype, usable)
        if count is not None and (not gpus or count != len(gpus)):
            options.append(f"{count} GPUs" + (f" of {format_gb(usable)} GB usable" if not gpus else ""))
        advice = f"; use {' or '.join(options)}" if options else "; no precision or GPU count of this size fits"
        out.append(
            f"needs {format_gb(est.total_bytes)} GB at {label} ({format_gb(est.per_gpu_bytes)} GB per GPU); "
            f"{selected}{advice}"
        )
    limit = shape.arch.max_position_embeddings
    if limit and budget.max_total_tokens > limit:
        out.append(f"max_total_tokens {budget.max_total_tokens} exceeds the model's context of {limit} tokens")
    return out


def _kv_dtype(shape: ModelShape, kv_cache_dtype: str | None, vllm: bool, notes: list[str]) -> int:
    """Bytes per cached element. A compressed-tensors checkpoint with an fp8 kv_cache_scheme: vLLM resolves its
    default ("auto") cache dtype to fp8 from it; TGI takes the cache dtype from --kv-cache-dtype only."""
    wanted = memory.kv_dtype_bytes(kv_cache_dtype)
    scheme = shape.stored.scheme
    if scheme is None or not scheme.kv_cache_fp8 or wanted == 1:
        return wanted
    if vllm and memory.KV_CACHE_DTYPES.get((kv_cache_dtype or "").strip().lower()) is None:
        notes.append("the checkpoint's kv_cache_scheme is fp8: vLLM keeps the KV cache in fp8 (1 byte per element)")
        return 1
    if not vllm:
        notes.append(
            "the checkpoint has fp8 KV-cache scales (kv_cache_scheme); TGI caches in fp8 only with "
            "--kv-cache-dtype fp8_e4m3fn, so the KV cache is planned at the model dtype"
        )
    return wanted


def size_model(
    metadata: ModelMetadata,
    *,
    precisions: Sequence[str] = memory.DEFAULT_PRECISIONS,
    quantize: str | None = None,
    max_input_tokens: int | None = None,
    max_total_tokens: int | None = None,
    max_batch_total_tokens: int | None = None,
    max_batch_prefill_tokens: int | None = None,
    kv_cache_dtype: str | None = None,
    num_shard: int | None = None,
    gpus: list[GpuCapacity] | None = None,
    inventory: list[HostCapacity] | None = None,
    preferred_hosts: Sequence[str] = (),
    keep_free_fraction: float = KEEP_FREE_FRACTION,
    vllm: VllmLimits | None = None,
) -> SizingReport:
    """Plan the memory of serving `metadata`'s model with TGI, or with vLLM when `vllm` holds its settings.

    `gpus` is one chosen set (num_shard = its length); otherwise `inventory` is searched for the smallest fitting
    set on one online host, placed by the placement engine (`preferred_hosts` first, e.g. those holding the
    files, leaving `keep_free_fraction` of each GPU free as the backend does); with neither, the plan is for
    `num_shard` (default 1) and `fits` is None.
    """
    config = metadata.config
    shape = model_shape(metadata)
    notes = list(metadata.notes)
    kv_dtype = _kv_dtype(shape, kv_cache_dtype, vllm is not None, notes)
    budget = token_budget(
        shape.arch, max_input_tokens, max_total_tokens, max_batch_total_tokens, max_batch_prefill_tokens
    )
    if gpus is not None and not gpus:
        raise SizingError("the GPU set is empty", "gpus")
    if gpus and num_shard and num_shard != len(gpus):
        raise SizingError(f"num_shard {num_shard} differs from the {len(gpus)} GPUs selected", "num_shard")
    if num_shard is not None and num_shard < 1:
        raise SizingError("num_shard must be at least 1", "num_shard")
    hosts = [h for h in inventory or [] if h.online and h.gpus] or None
    plan = {"gpus": gpus, "hosts": hosts, "num_shard": num_shard, "preferred_hosts": preferred_hosts}
    warnings: list[str] = []
    if inventory is not None and not hosts and not gpus:
        notes.append("no online GPU host in the inventory; sizes only")
    primary_fmt = _primary_format(shape, quantize, config, warnings, "vLLM" if vllm else "TGI")
    formats = _row_formats(precisions, primary_fmt, shape, config, vllm is not None)
    vllm_notes: list[SizingError] = []
    if vllm is not None:
        rows = [_vllm_row(vllm_plan.Model(shape, config, f, kv_dtype, vllm), f == primary_fmt, **plan) for f in formats]
        vllm_notes = list(rows[formats.index(primary_fmt)].vllm_notes)
        warnings += [note.message for note in vllm_notes]
    else:
        rows = [_plan_row(f, shape, budget, kv_dtype, **plan, keep_free_fraction=keep_free_fraction) for f in formats]
    primary = rows[formats.index(primary_fmt)]
    if vllm is None:
        warnings += _warnings(rows, primary, shape, budget, kv_dtype, gpus, hosts)
    if shape.params_source == "safetensors" and shape.breakdown.extra_linear:
        arch_total = shape.breakdown.total - shape.breakdown.extra_linear
        if abs(shape.breakdown.extra_linear) > 0.01 * arch_total:
            notes.append(
                f"the safetensors headers hold {shape.breakdown.total:,} parameters, the architecture "
                f"{arch_total:,}; the headers are used"
            )
    return SizingReport(
        source=metadata.source,
        revision_sha=metadata.revision_sha,
        model_type=shape.arch.model_type,
        params=shape.breakdown.total,
        params_source=shape.params_source,
        primary=primary,
        kv_cache_dtype=kv_cache_dtype,
        budget=budget,
        kv_bytes_per_token_latent=memory.kv_bytes_per_token_latent(shape.arch, kv_dtype),
        valid_shard_counts=(
            vllm_plan.shard_counts(vllm_plan.Model(shape, config, primary_fmt, kv_dtype, vllm), 64)
            if vllm
            else valid_shard_counts(shape.arch, primary_fmt)
        ),
        rows=rows,
        warnings=warnings,
        notes=notes,
        memory_mode="reserve" if vllm else "fill",
        vllm_notes=vllm_notes,
    )

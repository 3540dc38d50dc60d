"""`manage.py size_model REPO_OR_DIR`: the VRAM planner from the command line (table or --json), for TGI or, with
`--backend vllm`, for vLLM's share of each GPU (the planner page's arithmetic, deployments/sizing/vllm.py)."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import DatabaseError

from deployments.inventory.capacity import inventory_capacity
from deployments.serving.planning import vllm_details
from deployments.sizing import HostCapacity, SizingError, SizingReport, format_gb, load_model_metadata, size_model
from deployments.sizing.vllm import VllmLimits

TGI_ONLY = ("max_input_tokens", "max_total_tokens", "max_batch_total_tokens", "max_batch_prefill_tokens")


NO_DATABASE_NOTE = (
    "inventory fit skipped: no console database to read GPU hosts from ({reason}); sizes only. "
    "On a fresh checkout, run `manage.py migrate` and add GPU hosts to see where the model fits."
)


def inventory() -> list[HostCapacity]:
    """GPU hosts from the database, as placement sees them."""
    return inventory_capacity()


def inventory_or_note() -> tuple[list[HostCapacity] | None, str | None]:
    """The inventory, or, without a database (a fresh checkout before `migrate`), None and a note saying why:
    the command still sizes the model."""
    try:
        return inventory(), None
    except DatabaseError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, NO_DATABASE_NOTE.format(reason=reason)


def _gpu_set(row: dict[str, Any]) -> str:
    gpu_set = row["gpu_set"]
    if not gpu_set:
        return "-"
    return f"{gpu_set['host']}: GPU {','.join(str(i) for i in gpu_set['gpu_indexes'])}"


def _power(row: dict[str, Any]) -> str:
    power = row["power_range_w"]
    return f"{power['min_w']:.0f}-{power['max_w']:.0f}" if power else "-"


def _fits(value: bool | None) -> str:
    return {True: "yes", False: "no", None: "?"}[value]


def render_table(report: SizingReport) -> str:
    """A readable summary: one row per precision, then warnings and notes."""
    data = report.as_dict()
    sha = f" @ {data['revision_sha'][:12]}" if data["revision_sha"] else ""
    lines = [
        f"{data['source']}{sha}  ({data['model_type'] or 'unknown type'}, {data['params'] / 1e9:.2f} B parameters "
        f"from {data['params_source']})",
    ]
    if data.get("vllm"):
        lines += [f"vLLM: {sentence}" for sentence in vllm_details(data["vllm"])]
    else:
        lines.append(
            f"KV cache: {data['kv_bytes_per_token']:,} bytes/token x {data['max_batch_total_tokens']:,} tokens = "
            f"{format_gb(data['kv_bytes'])} GB; max_input_tokens {data['max_input_tokens']}, max_total_tokens "
            f"{data['max_total_tokens']}, prefill {data['max_batch_prefill_tokens']} tokens"
        )
    if data["kv_bytes_per_token_latent"]:
        lines.append(
            f"  (an MLA-aware engine would cache {data['kv_bytes_per_token_latent']:,} bytes/token; TGI does not)"
        )
    header = ("Precision", "Weights GB", "Total GB", "Per GPU GB", "Shards", "Fits", "GPU set", "Power W", "Note")
    table = [header]
    for row in data["rows"]:
        table.append(
            (
                row["label"],
                format_gb(row["weight_bytes"]),
                format_gb(row["total_bytes"]),
                format_gb(row["per_gpu_bytes"]),
                str(row["num_shard"]),
                _fits(row["fits"]),
                _gpu_set(row),
                _power(row),
                row["note"],
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for r in table:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(r, widths, strict=False)) + "  " + r[-1])
    lines += [f"warning: {w}" for w in data["warnings"]] + [f"note: {n}" for n in data["notes"]]
    lines.append("GB = 10^9 bytes; totals include CUDA context and prefill workspace per GPU.")
    return "\n".join(lines)


class Command(BaseCommand):
    """Size a model (Hub repo id or local directory) for TGI or vLLM and say where it fits."""

    help = (
        "Estimate the GPU memory a model needs under TGI (or vLLM with --backend vllm), per precision, and the "
        "smallest GPU set that fits."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        """Options mirror the launchers' flags (TGI's, and vLLM's for --backend vllm)."""
        parser.add_argument("source", help="Hub repo id (org/name) or a local model directory")
        parser.add_argument("--revision", help="Hub branch, tag or commit")
        parser.add_argument("--token", help="Hub token for gated or private repos (default: HF_TOKEN)")
        parser.add_argument("--quantize", help="TGI --quantize value, e.g. awq, gptq, eetq, fp8, bitsandbytes-nf4")
        parser.add_argument("--max-input-tokens", type=int)
        parser.add_argument("--max-total-tokens", type=int)
        parser.add_argument("--max-batch-total-tokens", type=int)
        parser.add_argument("--max-batch-prefill-tokens", type=int)
        parser.add_argument("--kv-cache-dtype", help="fp8_e4m3fn or fp8_e5m2 to halve the KV cache")
        parser.add_argument("--num-shard", type=int, help="plan for exactly this many GPUs")
        parser.add_argument("--backend", choices=("tgi", "vllm"), default="tgi", help="the serving backend (tgi)")
        parser.add_argument("--gpu-memory-utilization", type=float, help="vLLM: its share of each GPU (0.9)")
        parser.add_argument("--max-model-len", type=int, help="vLLM: the longest sequence (the model's context)")
        parser.add_argument("--max-num-seqs", type=int, help="vLLM: sequences in one batch")
        parser.add_argument("--max-num-batched-tokens", type=int, help="vLLM: tokens in one batch")
        parser.add_argument("--json", action="store_true", help="print the full report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        """Read the model's metadata, plan against the inventory, print."""
        vllm = None
        if options["backend"] == "vllm":
            tgi_only = [f"--{name.replace('_', '-')}" for name in TGI_ONLY if options[name] is not None]
            if tgi_only:
                raise CommandError(f"{', '.join(tgi_only)}: TGI settings; vLLM does not take them.")
            vllm = VllmLimits(
                options["gpu_memory_utilization"],
                options["max_model_len"],
                options["max_num_seqs"],
                options["max_num_batched_tokens"],
            )
        hosts, skipped = inventory_or_note()
        try:
            metadata = load_model_metadata(options["source"], revision=options["revision"], token=options["token"])
            report = size_model(
                metadata,
                quantize=options["quantize"],
                max_input_tokens=options["max_input_tokens"],
                max_total_tokens=options["max_total_tokens"],
                max_batch_total_tokens=options["max_batch_total_tokens"],
                max_batch_prefill_tokens=options["max_batch_prefill_tokens"],
                kv_cache_dtype=options["kv_cache_dtype"],
                num_shard=options["num_shard"],
                inventory=hosts,
                vllm=vllm,
            )
        except SizingError as exc:
            where = f" ({exc.field})" if exc.field else ""
            raise CommandError(f"{exc.message}{where}") from exc
        if skipped:
            report.notes.append(skipped)
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            self.stdout.write(render_table(report))

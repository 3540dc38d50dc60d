"""The variants of a base model, side by side (issue 18, point 4): every artifact derived from it (quantized,
fine-tuned, adapters, merged, quantized merges), each with how it was made, its size on disk, its weight memory by
the planner, its perplexity and accuracy against the base's, and its benchmark figures against the base's.

Comparisons are only ever made on like terms:
- evaluation figures only on the same data, measured the same way (EvalResult.comparable_key: the dataset version or
  the shipped sample's sha256, the context length and stride, the task kind); the newest figure per key counts;
- benchmark figures only between succeeded runs with the same workload shape on the same backend, device and host,
  at a load level both measured without errors (the highest such level; the row says which).

Reads only: the caller's visibility applies (artifacts and deployments the user may view).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.utils.translation import gettext as _

from console import roles
from console.permissions import restrict
from deployments.benchmarks.compare import verdict as bench_verdict
from deployments.benchmarks.models import BenchmarkRun
from deployments.models import Deployment, EvalResult, ModelArtifact
from deployments.quality.variant_claims import Claim, seed_claims
from deployments.sizing import memory
from deployments.sizing.errors import SizingError
from deployments.sizing.params import count_parameters, text_config

HIDDEN_STATES = (ModelArtifact.Status.FAILED, ModelArtifact.Status.CANCELLED, ModelArtifact.Status.DELETED)
LOWER_BETTER = ("perplexity", "ttft_ms_p50")
BETTER, WORSE, SAME = "better", "worse", "same"


@dataclass
class Compared:
    """One figure of a variant beside the base's on the same terms: value, base value, change, and the verdict by the
    figure's direction; `note` says on what (data, level) or why there is nothing to compare."""

    value: float | None = None
    base: float | None = None
    delta: float | None = None
    delta_percent: float | None = None
    verdict: str | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Variant:
    artifact: ModelArtifact
    parent: ModelArtifact
    depth: int
    kind: str
    made_by: str
    size_bytes: int | None
    weight_bytes: int | None
    weight_note: str
    perplexity: Compared
    accuracy: Compared
    tokens_per_s: Compared
    ttft_ms_p50: Compared
    benchmark: dict[str, Any] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return str((self.artifact.lineage or {}).get("scheme") or "")

    def as_dict(self) -> dict[str, Any]:
        artifact = self.artifact
        return {
            "artifact": artifact.pk,
            "repo_id": artifact.repo.repo_id,
            "host": artifact.host.name,
            "status": artifact.status,
            "artifact_kind": artifact.kind,
            "parent": self.parent.pk,
            "depth": self.depth,
            "kind": self.kind,
            "made_by": self.made_by,
            "scheme": self.scheme or None,
            "size_bytes": self.size_bytes,
            "weight_bytes": self.weight_bytes,
            "weight_note": self.weight_note,
            "perplexity": self.perplexity.as_dict(),
            "accuracy": self.accuracy.as_dict(),
            "output_tokens_per_s": self.tokens_per_s.as_dict(),
            "ttft_ms_p50": self.ttft_ms_p50.as_dict(),
            "benchmark": self.benchmark,
        }


@dataclass
class VariantTable:
    base: ModelArtifact
    base_size_bytes: int | None
    base_weight_bytes: int | None
    base_weight_note: str
    variants: list[Variant]
    claims: list[Claim]


# -- the artifacts -----------------------------------------------------------------------------------------------
def derived_artifacts(base: ModelArtifact, *, user) -> list[tuple[ModelArtifact, ModelArtifact, int]]:
    """(artifact, the one it was made from, depth) for every artifact made from `base`, transitively through `base`,
    breadth first; the ones the user may not view, and failed, cancelled or deleted ones, are left out (their own
    derivatives still show)."""
    visible = restrict(ModelArtifact.objects.all(), user, roles.VIEW)
    found: list[tuple[ModelArtifact, ModelArtifact, int]] = []
    parents, seen, depth = {base.pk: base}, {base.pk}, 1
    while parents:
        children = list(
            ModelArtifact.objects.filter(base_id__in=list(parents)).select_related("repo", "host").order_by("pk")
        )
        shown = set(visible.filter(pk__in=[a.pk for a in children]).values_list("pk", flat=True))
        next_parents = {}
        for child in children:
            if child.pk in seen:
                continue
            seen.add(child.pk)
            next_parents[child.pk] = child
            if child.pk in shown and child.status not in HIDDEN_STATES:
                found.append((child, parents[child.base_id], depth))
        parents, depth = next_parents, depth + 1
    return found


def how_made(artifact: ModelArtifact) -> tuple[str, str]:
    """(kind, method) from the lineage: quantized (the scheme), adapter or fine-tuned (the training method), merged."""
    lineage = artifact.lineage or {}
    if lineage.get("scheme"):
        return "quantized", str(lineage["scheme"])
    method = str(lineage.get("method") or "")
    if artifact.kind == ModelArtifact.Kind.ADAPTER:
        return "adapter", method
    if lineage.get("merged_from"):
        return "merged", method
    if method:
        return "fine-tuned", method
    return "derived", ""


def kind_label(kind: str) -> str:
    labels = {
        "quantized": _("quantized"),
        "adapter": _("LoRA adapter"),
        "merged": _("merged fine-tune"),
        "fine-tuned": _("fine-tuned"),
        "derived": _("derived"),
    }
    return labels.get(kind, kind)


# -- size and memory ---------------------------------------------------------------------------------------------
def size_on_disk(artifact: ModelArtifact) -> int | None:
    """The total of its files: the manifest's (what was verified), else the repo's listing, else the download's."""
    manifest = artifact.manifest if isinstance(artifact.manifest, dict) else {}
    for files in (manifest.get("files"), artifact.repo.files):
        sizes = [f.get("size") for f in files or [] if isinstance(f, dict)]
        if sizes and all(isinstance(s, int) for s in sizes):
            return sum(sizes)
    return artifact.repo.total_size or artifact.bytes_total or None


def weight_memory(artifact: ModelArtifact) -> tuple[int | None, str]:
    """The planner's weight bytes from the artifact's config.json (as stored: a quantized checkpoint at its width),
    or None with the reason."""
    if artifact.kind == ModelArtifact.Kind.ADAPTER:
        return None, _("An adapter is served on its base model's weights.")
    try:
        config = json.loads((Path(artifact.path) / "config.json").read_text())
    except (OSError, ValueError):
        return None, _("Its config.json is on %(host)s, not readable by the console.") % {"host": artifact.host.name}
    try:
        config = text_config(config)
        return memory.weight_bytes(count_parameters(config), memory.stored_format(config)), ""
    except (SizingError, KeyError, TypeError, ValueError) as error:
        return None, _("The planner cannot size it: %(error)s") % {"error": error}


# -- evaluation figures ------------------------------------------------------------------------------------------
def _identified(result: EvalResult) -> bool:
    return bool(result.data_sha256 or result.dataset_version_id)


def newest_results(artifacts: Iterable[ModelArtifact]) -> dict[int, dict[tuple, EvalResult]]:
    """Per artifact, the newest figure per comparable key (figures without a data identity cannot compare: left
    out)."""
    found: dict[int, dict[tuple, EvalResult]] = {}
    results = EvalResult.objects.filter(artifact__in=list(artifacts)).select_related("dataset_version__dataset")
    for result in results.order_by("-created_at", "-pk"):
        if _identified(result):
            found.setdefault(result.artifact_id, {}).setdefault(result.comparable_key, result)
    return found


def judge(name: str, value: float | None, base: float | None, note: str = "") -> Compared:
    """The change from `base` to `value` and whether it is better by the figure's direction."""
    if value is None or base is None:
        return Compared(value, base, note=note)
    delta = value - base
    percent = None if base == 0 else 100.0 * delta / abs(base)
    if delta == 0:
        return Compared(value, base, delta, percent, SAME, note)
    better = delta < 0 if name in LOWER_BETTER else delta > 0
    return Compared(value, base, delta, percent, BETTER if better else WORSE, note)


def _result_note(result: EvalResult) -> str:
    parts = [result.data_label]
    if result.metric == EvalResult.Metric.PERPLEXITY and result.context_length:
        parts.append(_("context %(n)s, stride %(s)s") % {"n": result.context_length, "s": result.stride or "—"})
    if result.task_kind:
        parts.append(result.task_kind_label)
    return " · ".join(str(p) for p in parts)


def compare_metric(metric: str, variant: dict[tuple, EvalResult], base: dict[tuple, EvalResult]) -> Compared:
    """The variant's newest figure of `metric` that the base has on the same data, against the base's; else its
    newest figure alone, with why there is no delta."""
    mine = sorted((r for r in variant.values() if r.metric == metric), key=lambda r: (r.created_at, r.pk), reverse=True)
    for result in mine:
        other = base.get(result.comparable_key)
        if other is not None:
            return judge(metric, result.value, other.value, _result_note(result))
    if mine:
        return Compared(mine[0].value, note=_("The base has no figure on the same data (%(data)s).")
                        % {"data": _result_note(mine[0])})  # fmt: skip
    return Compared(note=_("Not evaluated."))


# -- benchmarks --------------------------------------------------------------------------------------------------
def _shape(run: BenchmarkRun) -> tuple:
    workload = run.workload if isinstance(run.workload, dict) else {}
    keys = ("dialect", "prompt_tokens", "output_tokens", "sampling")
    # The same server kind on the same machine: a figure from another host or a CPU run compares nothing.
    where = (run.spec.backend, run.spec.device) if run.spec_id else (None, None)
    return (*where, run.deployment.host_id, *(repr(workload.get(k)) for k in keys))


def _clean_levels(run: BenchmarkRun) -> dict[tuple[str, float], Any]:
    levels = {}
    for step in run.steps.all():
        if step.has_errors or step.requests_failed or not step.requests_ok:
            continue
        if step.concurrency:
            levels.setdefault(("concurrency", float(step.concurrency)), step)
        elif step.rate:
            levels.setdefault(("rate", float(step.rate)), step)
    return levels


def finished_runs(artifacts: Iterable[ModelArtifact], *, user) -> dict[int, list[BenchmarkRun]]:
    """Per artifact, the succeeded benchmark runs of deployments (that the user may view) serving it, newest first."""
    visible = restrict(Deployment.objects.all(), user, roles.VIEW).values("pk")
    runs = (
        BenchmarkRun.objects.filter(
            spec__artifact__in=list(artifacts), state=BenchmarkRun.State.SUCCEEDED, deployment__in=visible
        )
        .select_related("spec", "deployment")
        .prefetch_related("steps")
        .order_by("-created_at", "-pk")
    )
    found: dict[int, list[BenchmarkRun]] = {}
    for run in runs:
        found.setdefault(run.spec.artifact_id, []).append(run)
    return found


def _level_label(key: tuple[str, float]) -> str:
    if key[0] == "concurrency":
        return _("concurrency %(n)s") % {"n": f"{key[1]:g}"}
    return _("%(rate)s requests/s") % {"rate": f"{key[1]:g}"}


def compare_benchmarks(variant: list[BenchmarkRun], base: list[BenchmarkRun]) -> tuple[Compared, Compared, dict]:
    """Output tokens/s and TTFT p50 of the newest pair of runs (same backend, device, host and workload) with a clean
    common level, at the highest such level (concurrency before rate)."""
    if not variant:
        note = _("No finished benchmark of a deployment serving it.")
        return Compared(note=note), Compared(note=note), {}
    for mine in variant:
        levels = _clean_levels(mine)
        for other in base:
            if _shape(other) != _shape(mine):
                continue
            common = set(levels) & set(_clean_levels(other))
            if not common:
                continue
            key = max(common, key=lambda k: (k[0] == "concurrency", k[1]))
            step, base_step = levels[key], _clean_levels(other)[key]
            label = _level_label(key)
            where = {"level": label, "load": key[0], "value": key[1], "run": mine.pk, "base_run": other.pk}
            figures = [
                _from_cell(
                    bench_verdict(name, getattr(base_step, name), getattr(step, name)), getattr(base_step, name), label
                )
                for name in ("output_tokens_per_s", "ttft_ms_p50")
            ]
            return figures[0], figures[1], where
    note = _("No benchmark of the base with the same workload, backend and host at a level both ran without errors.")
    step = next(iter(_clean_levels(variant[0]).values()), None)
    return (
        Compared(step.output_tokens_per_s if step else None, note=note),
        Compared(step.ttft_ms_p50 if step else None, note=note),
        {},
    )


def _from_cell(cell, base: float | None, note: str) -> Compared:
    """A benchmark comparison's cell (its 5 % noise band: within it, "same", as on the benchmark pages)."""
    return Compared(cell.value, base, cell.delta, cell.delta_percent, cell.verdict, note)


# -- the table ---------------------------------------------------------------------------------------------------
def variant_table(base: ModelArtifact, *, user) -> VariantTable:
    """Every variant of `base` the user may view, with its figures against the base's, and the seed's claims."""
    derived = derived_artifacts(base, user=user)
    artifacts = [base, *(a for a, _parent, _depth in derived)]
    results = newest_results(artifacts)
    runs = finished_runs(artifacts, user=user)
    base_results, base_runs = results.get(base.pk, {}), runs.get(base.pk, [])
    variants = []
    for artifact, parent, depth in derived:
        kind, made_by = how_made(artifact)
        weight, weight_note = weight_memory(artifact)
        mine = results.get(artifact.pk, {})
        tokens, ttft, where = compare_benchmarks(runs.get(artifact.pk, []), base_runs)
        variants.append(
            Variant(
                artifact=artifact,
                parent=parent,
                depth=depth,
                kind=kind,
                made_by=made_by,
                size_bytes=size_on_disk(artifact),
                weight_bytes=weight,
                weight_note=weight_note,
                perplexity=compare_metric(EvalResult.Metric.PERPLEXITY, mine, base_results),
                accuracy=compare_metric(EvalResult.Metric.ACCURACY, mine, base_results),
                tokens_per_s=tokens,
                ttft_ms_p50=ttft,
                benchmark=where,
            )
        )
    base_weight, base_weight_note = weight_memory(base)
    return VariantTable(
        base=base,
        base_size_bytes=size_on_disk(base),
        base_weight_bytes=base_weight,
        base_weight_note=base_weight_note,
        variants=variants,
        claims=seed_claims(base, variants, base_weight),
    )

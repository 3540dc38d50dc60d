"""Quantize and evaluate jobs, console side: every check before any work (with the program's own spec rules),
placement by the one placement engine with GPUs reserved as quantize:<job> / evaluate:<job>, starting and
cancelling, registering the quantized artifact with its lineage, and storing evaluation figures.

Datasets the engineer may train on but not read: the job gets the version's file on the host; only the
dataset's name, version and sha256 are recorded, never a row."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils.translation import gettext as _

import audit
from console import roles
from console.errors import ApplicationError
from console.permissions import require, require_dataset
from deployments.finetune.services import HYPERPARAMETERS, register_output, store_of
from deployments.inventory.placement import PlacementError, Requirement, place
from deployments.inventory.selectors import host_states
from deployments.inventory.services import reserve_gpus
from deployments.jobs.services import job_cancel, job_create
from deployments.models import ArtifactUse, DatasetVersion, EvalResult, Gpu, GpuReservation, Host, Job, ModelArtifact

# The programs' own rules (standard library only): forms and serializers read them from here.
from workers.jobs import evaluate_spec, quantize_spec
from workers.jobs.protocol import BadInput

SCHEMES = quantize_spec.SCHEMES
TASK_KINDS = evaluate_spec.TASK_KINDS
GROUP_SIZES = quantize_spec.GROUP_SIZES
HOLDER = "{kind}:{pk}"
# What a job holds on a GPU beyond the weights as stored: activations, calibration statistics (GPTQ's Hessians),
# the CUDA context. A rough margin: the placement only has to refuse what clearly cannot fit.
WORKING_MARGIN = 1.25
QUANTIZE_PATHS = {"source_model": "/source", "output_dir": "/out"}
__all__ = ["GROUP_SIZES", "SCHEMES", "TASK_KINDS"]  # and the functions below


def cuda_only_reason(name: str) -> str | None:
    """Why a scheme cannot run on a CPU, in the user's language where the console knows the reason (the spec module
    is standard library only and says it in English)."""
    reason = SCHEMES[name].cuda_only_reason if name in SCHEMES else None
    if reason and name == "W4A16_AWQ":
        return _(
            "llm-compressor's AWQ search pins its cached activations in page-locked memory for fast copies to a GPU, "
            "which needs a CUDA device."
        )
    return reason


def holder(job: Job) -> str:
    return HOLDER.format(kind=job.kind, pk=job.pk)


def release(job: Job) -> None:
    """Free the job's GPUs and its hold on the artifacts it reads (done, failed or cancelled)."""
    GpuReservation.objects.filter(holder=holder(job)).delete()
    ArtifactUse.objects.filter(holder=holder(job)).delete()


# -- shared checks -----------------------------------------------------------------------------------------------
def _config(artifact: ModelArtifact) -> dict[str, Any] | None:
    try:
        return json.loads((Path(artifact.path) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # the files are on another host: the program checks there


def _has_gpus(host: Host) -> bool:
    return Gpu.objects.filter(host=host).exists()


def weights_on_disk(artifact: ModelArtifact) -> int:
    """The artifact's weight files' size (safetensors, or .bin), read on disk when the console can, else as
    registered."""
    directory = Path(artifact.path)
    sizes = [p.stat().st_size for pattern in ("*.safetensors", "*.bin") for p in directory.glob(pattern)]
    if sizes:
        return sum(sizes)
    files = artifact.repo.files or []
    listed = [int(f.get("size") or 0) for f in files if str(f.get("path", "")).endswith((".safetensors", ".bin"))]
    return sum(listed) or int(artifact.repo.total_size or artifact.bytes_total or 0)


def _ready_model(artifact: ModelArtifact, field: str) -> None:
    if artifact.status != ModelArtifact.Status.READY:
        raise ApplicationError(_("%(model)s is not ready on its host.") % {"model": artifact.repo.repo_id}, field=field)
    if artifact.kind != ModelArtifact.Kind.MODEL:
        raise ApplicationError(
            _("%(model)s is an adapter: merge it into its base model first, then use the merged model.")
            % {"model": artifact.repo.repo_id},
            field=field,
        )
    if artifact.host.runtime != Host.Runtime.PROCESS:
        raise ApplicationError(
            _("Quantize and evaluate jobs run on hosts with the process runtime; %(host)s runs docker.")
            % {"host": artifact.host.name},
            field=field,
        )


def _place(host: Host, memory: int, field: str, what: str) -> list[int]:
    """One GPU of `host` with `memory` free, by the placement engine (reservations counted); a clear refusal
    naming what does not fit."""
    try:
        placement = place(
            Requirement(memory_per_gpu=max(memory, 1), gpu_count=1, hosts=frozenset({host.name})),
            host_states(Host.objects.filter(pk=host.pk)),
        )
    except PlacementError as error:
        raise ApplicationError(
            _(
                "No GPU of %(host)s, which holds %(what)s, can take it (%(gb).1f GB needed with working memory): "
                "%(reason)s Free GPUs there, or copy the model to a host with a bigger GPU."
            )
            % {"host": host.name, "what": what, "gb": memory / 1e9, "reason": str(error)},
            field=field,
        ) from None
    return list(placement.gpu_indexes)


def _hold(job: Job, artifacts: list[ModelArtifact]) -> None:
    # The files must stay while the job reads them (a delete waits for the holders to go).
    for artifact in artifacts:
        ArtifactUse.objects.get_or_create(artifact=artifact, holder=holder(job))


def _version(actor, version: DatasetVersion, field: str) -> None:
    require_dataset(actor, roles.FINETUNE, version.dataset)
    if version.status != DatasetVersion.Status.READY:
        raise ApplicationError(_("This dataset version is not ready."), field=field)


def _dataset_detail(version: DatasetVersion | None) -> dict[str, Any]:
    if version is None:
        return {"dataset": None, "note": "shipped sample"}
    return {"dataset": version.dataset.name, "dataset_version": version.version, "dataset_sha256": version.sha256}


# -- quantize ----------------------------------------------------------------------------------------------------
def check_quantize_options(options: dict[str, Any], *, device: str = "cpu", calibration: bool = False) -> dict:
    """The options with defaults filled in, by the program's own rules; ApplicationError naming the field.
    `options`: scheme, group_size, ignore, kv_cache_fp8, samples, seq_len, seed."""
    raw = {
        **QUANTIZE_PATHS,
        "scheme": options.get("scheme"),
        "group_size": options.get("group_size"),
        "ignore": options.get("ignore"),
        "kv_cache_fp8": options.get("kv_cache_fp8"),
        "calibration": {
            "path": "/calibration.jsonl" if calibration else None,
            "samples": options.get("samples"),
            "seq_len": options.get("seq_len"),
        },
        "device": device,
        "seed": options.get("seed"),
    }
    try:
        spec = quantize_spec.parse_spec(raw)
    except BadInput as error:
        # The form and the API name calibration numbers by their own names.
        raise ApplicationError(error.message, field=(error.field or "scheme").removeprefix("calibration.")) from None
    checked = spec.to_dict()
    for name in QUANTIZE_PATHS:
        checked.pop(name)
    checked["calibration"].pop("path")
    return checked


@transaction.atomic
def quantize_start(
    *, actor, source: ModelArtifact, options: dict[str, Any], calibration: DatasetVersion | None = None
) -> Job:
    """Check, place and start quantizing `source` into a new compressed-tensors artifact on its host.
    `calibration`: the dataset version to calibrate on (None: the sample the project ships)."""
    require(actor, roles.FINETUNE)
    if calibration is not None:
        _version(actor, calibration, "calibration_version")
    _ready_model(source, "source")
    config = _config(source)
    method = quantize_spec.source_quantization(config) if config is not None else None
    if method is not None:
        raise ApplicationError(
            _("%(model)s is already quantized (%(method)s): quantize the full-precision model it was made from.")
            % {"model": source.repo.repo_id, "method": method},
            field="source",
        )
    gpus = _has_gpus(source.host)
    reason = cuda_only_reason(str(options.get("scheme") or ""))
    if reason and not gpus:
        raise ApplicationError(
            _("%(scheme)s cannot run on %(host)s, which has no GPU: %(reason)s")
            % {"scheme": options["scheme"], "host": source.host.name, "reason": reason},
            field="scheme",
        )
    checked = check_quantize_options(options, device="cuda" if gpus else "cpu", calibration=calibration is not None)
    problem = quantize_spec.group_size_problem(config, checked["group_size"]) if config is not None else None
    if problem:
        raise ApplicationError(problem, field="group_size")
    calibrated = SCHEMES[checked["scheme"]].needs_calibration or checked["kv_cache_fp8"]
    samples = checked["calibration"]["samples"]
    if calibrated and calibration is not None and calibration.row_count is not None and calibration.row_count < samples:
        raise ApplicationError(
            _(
                "%(dataset)s v%(version)s has %(rows)s rows; %(samples)s calibration samples were asked for. Ask for "
                "at most %(rows)s samples, or choose a larger version."
            )
            % {
                "dataset": calibration.dataset.name,
                "version": calibration.version,
                "rows": calibration.row_count,
                "samples": samples,
            },
            field="samples",
        )
    memory = int(weights_on_disk(source) * WORKING_MARGIN)
    gpu_indexes = _place(source.host, memory, "source", source.repo.repo_id) if gpus else []
    job = job_create(
        kind=Job.Kind.QUANTIZE,
        actor=actor,
        target=source,
        queue=source.host.queue,
        params={
            "source_artifact_id": source.pk,
            "dataset_version_id": calibration.pk if calibration is not None and calibrated else None,
            "options": checked,
            "device": "cuda" if gpus else "cpu",
            "gpu_indexes": gpu_indexes,
            "estimate_bytes": memory,
        },
    )
    if gpu_indexes:
        reserve_gpus(holder=holder(job), host=source.host, gpu_indexes=gpu_indexes, memory_bytes=memory)
    _hold(job, [source])
    audit.record(
        action="quantize.started",
        actor=actor,
        target=job,
        detail={
            "source": f"{source.repo.repo_id}@{source.repo.commit or 'local'}",
            "scheme": checked["scheme"],
            "calibration": _dataset_detail(calibration if calibrated else None) if calibrated else None,
            "host": source.host.name,
            "gpu_indexes": gpu_indexes,
        },
    )
    return job


def quantize_output_home(source: ModelArtifact, job: Job) -> Path:
    """Where a quantized model lives: the source's host model store (servers read it there)."""
    name = source.repo.repo_id.rsplit("/", 1)[-1]
    return store_of(source.host) / f"quantized--{name}" / f"{job.params['options']['scheme'].lower()}-job-{job.pk}"


@transaction.atomic
def quantize_finished(*, job: Job, result: dict, path: Path, manifest: dict) -> ModelArtifact:
    """Register the quantized model with its lineage (the recipe verbatim); audited."""
    source = ModelArtifact.objects.select_related("repo", "host").get(pk=job.params["source_artifact_id"])
    version_id = job.params.get("dataset_version_id")
    version = DatasetVersion.objects.select_related("dataset").get(pk=version_id) if version_id else None
    calibrated = bool(result.get("calibration_samples"))
    lineage = {
        "source": f"{source.repo.repo_id}@{source.repo.commit or 'local'}",
        "source_artifact": source.pk,
        "scheme": result.get("scheme") or job.params["options"]["scheme"],
        "options": job.params["options"],
        "recipe": result.get("recipe"),
        "calibration": (
            {
                **_dataset_detail(version),
                "samples": result.get("calibration_samples"),
                "sha256": result.get("calibration_sha256"),
            }
            if calibrated
            else None
        ),
        "versions": result.get("versions") or {},
        "seconds": result.get("seconds"),
        "peak_memory_bytes": result.get("peak_memory_bytes"),
        "device": job.params.get("device"),
        "job": job.pk,
    }
    name = source.repo.repo_id.rsplit("/", 1)[-1]
    artifact = register_output(
        job=job,
        base=source,
        kind=ModelArtifact.Kind.MODEL,
        path=path,
        manifest=manifest,
        lineage=lineage,
        repo_id=f"{name}-{lineage['scheme'].lower()}-{job.pk}",
        action="quantize.finished",
    )
    return artifact


# -- evaluate ----------------------------------------------------------------------------------------------------
# A fine-tune's eval split when the version's statistics have not computed one: a common held-out share, and the
# seed a fine-tune uses unless told otherwise.
DEFAULT_EVAL_FRACTION = 0.1
DEFAULT_SPLIT_SEED = HYPERPARAMETERS["seed"][1]
SPLIT_OPTIONS = ("eval_split", "eval_fraction", "seed")


def model_id(artifact: ModelArtifact) -> str:
    return f"artifact-{artifact.pk}"


def eval_split_defaults(version: DatasetVersion | None) -> dict[str, Any]:
    """The eval split to offer for `version`: the one its statistics computed (DatasetVersion.stats["split"], the
    split a fine-tune with that eval_fraction and seed makes), else DEFAULT_EVAL_FRACTION and the fine-tune's
    default seed."""
    computed = ((version.stats or {}).get("split") if version is not None else None) or {}
    fraction, seed = computed.get("eval_fraction"), computed.get("seed")
    if isinstance(fraction, (int, float)) and 0 < fraction < evaluate_spec.MAX_EVAL_FRACTION and isinstance(seed, int):
        return {"eval_fraction": float(fraction), "seed": seed}
    return {"eval_fraction": DEFAULT_EVAL_FRACTION, "seed": DEFAULT_SPLIT_SEED}


def _with_split(options: dict | None, version: DatasetVersion | None, prefix: str) -> dict | None:
    """`options` with eval_split / eval_fraction / seed turned into the spec's split: the rows a fine-tune with
    that eval_fraction and seed holds out of `version` (blank ones: eval_split_defaults)."""
    if options is None:
        return None
    options = dict(options)
    wanted, fraction, seed = (options.pop(name, None) for name in SPLIT_OPTIONS)
    if not (wanted or fraction is not None or seed is not None):
        return options
    if version is None:
        raise ApplicationError(
            _("The shipped text sample has no fine-tune eval split: choose a dataset version."),
            field=f"{prefix}.eval_split",
        )
    defaults = eval_split_defaults(version)
    split = {
        "eval_fraction": defaults["eval_fraction"] if fraction is None else fraction,
        "seed": defaults["seed"] if seed is None else seed,
    }
    rows, fraction = version.row_count, split["eval_fraction"]
    numeric = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)  # else the spec says what's wrong
    if (
        rows is not None
        and numeric
        and 0 < fraction < evaluate_spec.MAX_EVAL_FRACTION
        and not 0 < math.ceil(fraction * rows) < rows
    ):
        raise ApplicationError(
            _(
                "%(dataset)s v%(version)s has %(rows)s rows: too few for an eval split of %(fraction)s with rows "
                "left to train on. Evaluate on the whole version, or choose one with more rows."
            )
            % {
                "dataset": version.dataset.name,
                "version": version.version,
                "rows": rows,
                "fraction": split["eval_fraction"],
            },
            field=f"{prefix}.eval_split",
        )
    options["split"] = split
    return options


def check_evaluate_options(
    artifacts: list[ModelArtifact], perplexity: dict | None, task: dict | None, *, device: str = "cpu"
) -> dict[str, Any]:
    """The evaluate spec's options (without paths) with defaults filled in, by the program's rules.
    `perplexity`: context_length, stride, max_tokens (the data is chosen apart); `task`: kind and fields."""
    raw = {
        "models": [{"id": model_id(a), "path": "/model"} for a in artifacts],
        "perplexity": None if perplexity is None else {**perplexity, "path": None},
        "task": None if task is None else {**task, "path": "/task.jsonl"},
        "device": device,
    }
    try:
        spec = evaluate_spec.parse_spec(raw)
    except BadInput as error:
        # The console names the split's numbers as its own inputs: perplexity.eval_fraction, task.seed.
        field = (error.field or "perplexity").replace(".split.", ".")
        raise ApplicationError(error.message, field="artifacts" if field.startswith("models") else field) from None
    checked = spec.to_dict()
    checked.pop("models")
    if checked["perplexity"] is not None:
        checked["perplexity"].pop("path")
    if checked["task"] is not None:
        checked["task"].pop("path")
    return checked


@transaction.atomic
def evaluate_start(
    *,
    actor,
    artifacts: list[ModelArtifact],
    perplexity: dict | None = None,
    perplexity_version: DatasetVersion | None = None,
    task: dict | None = None,
    task_version: DatasetVersion | None = None,
) -> Job:
    """Check, place and start evaluating `artifacts` on the same held-out data: perplexity on
    `perplexity_version` (None: the shipped text sample) when `perplexity` is given, task accuracy on
    `task_version` when `task` is given. Either may ask for the version's fine-tune eval split only
    (eval_split, eval_fraction, seed: see _with_split)."""
    require(actor, roles.FINETUNE)
    if not artifacts:
        raise ApplicationError(_("Choose at least one model."), field="artifacts")
    for artifact in artifacts:
        _ready_model(artifact, "artifacts")
    hosts = {a.host_id for a in artifacts}
    if len(hosts) > 1:
        raise ApplicationError(
            _("The models must be on one host, so one job compares them on the same data; these are on %(hosts)s.")
            % {"hosts": ", ".join(sorted({a.host.name for a in artifacts}))},
            field="artifacts",
        )
    if perplexity is not None and perplexity_version is not None:
        _version(actor, perplexity_version, "perplexity_version")
    if task is not None:
        if task_version is None:
            raise ApplicationError(_("Choose the dataset version that defines the task."), field="task_version")
        _version(actor, task_version, "task_version")
    perplexity = _with_split(perplexity, perplexity_version, "perplexity")
    task = _with_split(task, task_version, "task")
    host = artifacts[0].host
    gpus = _has_gpus(host)
    checked = check_evaluate_options(artifacts, perplexity, task, device="cuda" if gpus else "cpu")
    # One model is loaded at a time: the largest sets what a GPU must hold.
    memory = int(max(weights_on_disk(a) for a in artifacts) * WORKING_MARGIN)
    gpu_indexes = _place(host, memory, "artifacts", ", ".join(a.repo.repo_id for a in artifacts)) if gpus else []
    versions = [
        v.pk
        for v in ((perplexity_version if perplexity is not None else None), task_version if task else None)
        if v is not None
    ]
    job = job_create(
        kind=Job.Kind.EVALUATE,
        actor=actor,
        target=artifacts[0],
        queue=host.queue,
        params={
            "artifact_ids": [a.pk for a in artifacts],
            "perplexity_version_id": perplexity_version.pk if perplexity is not None and perplexity_version else None,
            "task_version_id": task_version.pk if task is not None else None,
            "dataset_version_ids": versions,
            "options": checked,
            "gpu_indexes": gpu_indexes,
            "estimate_bytes": memory,
        },
    )
    if gpu_indexes:
        reserve_gpus(holder=holder(job), host=host, gpu_indexes=gpu_indexes, memory_bytes=memory)
    _hold(job, artifacts)
    audit.record(
        action="evaluate.started",
        actor=actor,
        target=job,
        detail={
            "models": [f"{a.repo.repo_id}@{a.repo.commit or 'local'}" for a in artifacts],
            "perplexity": None
            if perplexity is None
            else {**_dataset_detail(perplexity_version), **(checked["perplexity"] or {})},
            "task": None if task is None else {**_dataset_detail(task_version), "kind": checked["task"]["kind"]},
            "host": host.name,
            "gpu_indexes": gpu_indexes,
        },
    )
    return job


@transaction.atomic
def evaluate_finished(*, job: Job, result: dict) -> list[EvalResult]:
    """Store the figures of each model, keyed by the data they were measured on; audited."""
    artifacts = {model_id(a): a for a in ModelArtifact.objects.filter(pk__in=job.params["artifact_ids"])}
    ppl_version_id = job.params.get("perplexity_version_id")
    task_version_id = job.params.get("task_version_id")
    data = result.get("perplexity_data") or {}
    task = result.get("task") or {}
    options = job.params.get("options") or {}
    detail = {"versions": result.get("versions") or {}, "device": result.get("device") or options.get("device")}
    rows = []
    for key, figures in (result.get("models") or {}).items():
        artifact = artifacts.get(key)
        if artifact is None:
            continue  # not one of this job's models: ignored rather than trusted
        if figures.get("perplexity") is not None:
            rows.append(
                EvalResult(
                    job=job,
                    artifact=artifact,
                    metric=EvalResult.Metric.PERPLEXITY,
                    dataset_version_id=ppl_version_id,
                    # The data file's bytes; the token ids' own sha256 (same tokenizer, same ids) is in detail.
                    data_sha256=str(data.get("file_sha256") or data.get("sha256") or ""),
                    context_length=data.get("context_length"),
                    stride=data.get("stride"),
                    value=float(figures["perplexity"]),
                    tokens=figures.get("tokens"),
                    tokens_per_s=_rate(figures, "tokens_per_second", "tokens_per_s"),
                    detail={
                        **detail,
                        "token_ids_sha256": data.get("sha256"),
                        # The fine-tune eval split scored (None: the whole version), and the rows read.
                        "split": data.get("split"),
                        "rows": data.get("rows"),
                        "nll": figures.get("nll"),
                        "seconds": figures.get("seconds"),
                        "dtype": figures.get("dtype"),
                    },
                )
            )
        if figures.get("accuracy") is not None:
            rows.append(
                EvalResult(
                    job=job,
                    artifact=artifact,
                    metric=EvalResult.Metric.ACCURACY,
                    dataset_version_id=task_version_id,
                    data_sha256=str(task.get("sha256") or ""),
                    task_kind=str(task.get("kind") or (options.get("task") or {}).get("kind") or ""),
                    value=float(figures["accuracy"]),
                    examples=figures.get("examples"),
                    detail={
                        **detail,
                        "correct": figures.get("correct"),
                        "split": task.get("split"),
                        "seconds": figures.get("task_seconds"),
                        "fields": {k: v for k, v in (options.get("task") or {}).items() if k != "kind"},
                    },
                )
            )
    created = EvalResult.objects.bulk_create(rows)
    audit.record(
        action="evaluate.finished",
        actor=None,
        actor_name=f"agent:{job.queue}",
        target=job,
        detail={"results": [{"artifact": r.artifact_id, "metric": r.metric, "value": r.value} for r in created]},
    )
    return created


def _rate(figures: dict, *names: str) -> float | None:
    for name in names:
        if figures.get(name) is not None:
            return float(figures[name])
    return None


# -- both --------------------------------------------------------------------------------------------------------
KINDS = {Job.Kind.QUANTIZE: "quantize", Job.Kind.EVALUATE: "evaluate"}


@transaction.atomic
def quality_cancel(*, actor, job: Job) -> Job:
    """Stop a quantize or evaluate job: the program is stopped; nothing half-made is registered."""
    if job.kind not in KINDS:
        raise ApplicationError(_("This is not a quantize or evaluate job."))
    job = job_cancel(actor=actor, job=job, action=roles.FINETUNE)
    audit.record(action=f"{KINDS[job.kind]}.cancelled", actor=actor, target=job, detail={})
    return job

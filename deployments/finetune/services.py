"""Fine-tunes, console side: the estimate before a run, starting one (checked with the program's own spec rules,
placed by the one placement engine, GPUs reserved as finetune:<job>), cancelling and resuming it, registering the
adapter or model it produced with its lineage, and merging an adapter into its base."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _

import audit
from console import roles
from console.errors import ApplicationError
from console.permissions import require, require_dataset
from deployments.inventory.capacity import inventory_capacity
from deployments.inventory.services import reserve_gpus
from deployments.jobs.services import job_cancel, job_create, job_dispatch
from deployments.models import (
    Checkpoint,
    DatasetVersion,
    Gpu,
    GpuReservation,
    Host,
    Job,
    ModelArtifact,
    ModelRepo,
    ModelSource,
)
from deployments.sizing import SizingError
from deployments.sizing.training import TrainingSetup
from deployments.sizing.training_plan import TrainingVerdict, plan_training

# The program's own rules (standard library only); forms and serializers read them from here.
from workers.jobs.finetune_spec import HYPERPARAMETERS, METHODS, PRECISIONS, SCHEDULERS, TOKENIZER_FILES, parse_spec
from workers.jobs.protocol import BadInput

FINETUNE_SOURCE = "Fine-tunes"
HOLDER = "finetune:{}"
# Spec fields the console fills in itself (paths on the host); the rest come from the form or the API.
PATH_FIELDS = {"base_model": "/base", "dataset": "/dataset.jsonl", "output_dir": "/out"}
RESUMABLE = (Job.Status.CANCELLED, Job.Status.FAILED)
# The planner's names for what the form and the API call otherwise.
SIZING_FIELDS = {
    "lora_target_modules": "target_modules",
    "micro_batch_size": "batch_size",
    "gradient_accumulation": "grad_accumulation",
}
__all__ = ["HYPERPARAMETERS", "METHODS", "PRECISIONS", "SCHEDULERS"]  # and the functions below


def holder(job: Job) -> str:
    return HOLDER.format(job.pk)


def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options with defaults filled in, by the same rules the training program applies (so the form and the
    API refuse what the program would); ApplicationError naming the field."""
    try:
        spec = parse_spec({**options, **PATH_FIELDS})
    except BadInput as error:
        # The form names hyperparameters by their own name; the API's error says the full path too.
        raise ApplicationError(error.message, field=(error.field or "").removeprefix("hyperparameters.")) from None
    checked = spec.to_dict()
    for name in PATH_FIELDS:
        checked.pop(name)
    checked.pop("resume_from", None)
    return checked


def _config(base: ModelArtifact) -> dict[str, Any] | None:
    try:
        return json.loads((Path(base.path) / "config.json").read_text())
    except (OSError, ValueError):
        return None  # the files are on another host: no estimate here


def _device(host: Host) -> str:
    return "cuda" if Gpu.objects.filter(host=host).exists() else "cpu"


def setup_for(options: dict[str, Any], device: str) -> TrainingSetup:
    hyper = options["hyperparameters"]
    targets = hyper["target_modules"]
    return TrainingSetup(
        method=options["method"],
        precision="fp32" if device == "cpu" else ("bf16" if options["precision"] == "auto" else options["precision"]),
        micro_batch_size=hyper["batch_size"],
        max_seq_len=hyper["max_seq_len"],
        gradient_accumulation=hyper["grad_accumulation"],
        gradient_checkpointing=options["gradient_checkpointing"],
        lora_r=hyper["lora_r"],
        lora_target_modules=(targets,) if isinstance(targets, str) else tuple(targets),
        device=device,
    )


def finetune_estimate(*, base: ModelArtifact, options: dict[str, Any], gpu_count: int = 1) -> TrainingVerdict | None:
    """The training memory estimate for these options on the base model's host (its GPUs through the placement
    engine, GPUs held by others counted); None when the model's config.json cannot be read here."""
    config = _config(base)
    if config is None:
        return None
    device = _device(base.host)
    try:
        return plan_training(
            config,
            setup_for(options, device),
            inventory=inventory_capacity(Host.objects.filter(pk=base.host_id)) if device == "cuda" else None,
            gpu_count=gpu_count,
            preferred_hosts=[base.host.name],
        )
    except SizingError as error:
        field = SIZING_FIELDS.get(error.field or "", error.field or "method")
        raise ApplicationError(error.text(_), field=field) from None


def _check_inputs(actor, base: ModelArtifact, version: DatasetVersion) -> None:
    require(actor, roles.FINETUNE)
    require_dataset(actor, roles.FINETUNE, version.dataset)
    if version.status != DatasetVersion.Status.READY:
        raise ApplicationError(_("This dataset version is not ready to train on."), field="dataset_version")
    if base.status != ModelArtifact.Status.READY:
        raise ApplicationError(_("The base model's files are not ready on its host."), field="base")
    if base.kind != ModelArtifact.Kind.MODEL:
        raise ApplicationError(_("Choose a full model as the base, not an adapter."), field="base")
    directory = Path(base.path)
    if (directory / "config.json").is_file() and not any((directory / name).is_file() for name in TOKENIZER_FILES):
        # Checked here when the console can read the files; the program checks again on the host.
        raise ApplicationError(
            _("%(model)s has no tokenizer files: choose a model repository that ships its tokenizer.")
            % {"model": base.repo.repo_id},
            field="base",
        )
    if base.host.runtime != Host.Runtime.PROCESS:
        raise ApplicationError(
            _("Fine-tunes run on hosts with the process runtime; %(host)s runs docker.") % {"host": base.host.name},
            field="base",
        )


@transaction.atomic
def finetune_start(
    *,
    actor,
    base: ModelArtifact,
    version: DatasetVersion,
    options: dict[str, Any],
    gpu_count: int = 1,
) -> Job:
    """Check, estimate, place and start a fine-tune of `base` on `version`; the job trains on that exact version."""
    _check_inputs(actor, base, version)
    checked = check_options(options)
    verdict = finetune_estimate(base=base, options=checked, gpu_count=gpu_count)
    if verdict is not None and verdict.fits is False:
        raise ApplicationError(verdict.reason.text(_) if verdict.reason else _("It does not fit."), field="method")
    gpu_indexes = list(verdict.gpu_indexes) if verdict is not None and verdict.fits else []
    if _device(base.host) == "cpu" and checked["method"] == "qlora":
        raise ApplicationError(
            _(
                "QLoRA needs a CUDA GPU (4-bit bitsandbytes kernels); %(host)s has none. Choose LoRA there, or a base "
                "model on a host with a CUDA GPU."
            )
            % {"host": base.host.name},
            field="method",
        )
    job = job_create(
        kind=Job.Kind.FINETUNE,
        actor=actor,
        target=version.dataset,
        queue=base.host.queue,
        params={
            "base_artifact_id": base.pk,
            "dataset_version_id": version.pk,
            "options": checked,
            "gpu_indexes": gpu_indexes,
            "estimate_bytes": verdict.estimate.total if verdict is not None else None,
        },
    )
    if gpu_indexes:
        reserve_gpus(holder=holder(job), host=base.host, gpu_indexes=gpu_indexes, memory_bytes=verdict.estimate.total)
    audit.record(
        action="finetune.started",
        actor=actor,
        target=job,
        detail={
            "base": f"{base.repo.repo_id}@{base.repo.commit}",
            "dataset": version.dataset.name,
            "dataset_version": version.version,
            "dataset_sha256": version.sha256,
            "method": checked["method"],
            "host": base.host.name,
            "gpu_indexes": gpu_indexes,
        },
    )
    return job


def release(job: Job) -> None:
    GpuReservation.objects.filter(holder=holder(job)).delete()


def _finetune_job(job: Job) -> Job:
    if job.kind != Job.Kind.FINETUNE:
        raise ApplicationError(_("This is not a fine-tune job."))
    return job


@transaction.atomic
def finetune_cancel(*, actor, job: Job) -> Job:
    """Stop a fine-tune: the program saves a checkpoint at its next step boundary, then the job is cancelled."""
    _finetune_job(job)
    job = job_cancel(actor=actor, job=job, action=roles.FINETUNE)
    audit.record(action="finetune.cancelled", actor=actor, target=job, detail={})
    return job


@transaction.atomic
def finetune_resume(*, actor, job: Job) -> Job:
    """Run a stopped or failed fine-tune again from its newest checkpoint (the same job, so one log and one curve)."""
    _finetune_job(job)
    require(actor, roles.FINETUNE)
    job = Job.objects.select_for_update().get(pk=job.pk)
    version = DatasetVersion.objects.select_related("dataset").get(pk=job.params["dataset_version_id"])
    require_dataset(actor, roles.FINETUNE, version.dataset)
    if job.status not in RESUMABLE:
        raise ApplicationError(_("Only a cancelled or failed fine-tune can be resumed."))
    newest = Checkpoint.objects.filter(job=job).exclude(tier=Checkpoint.Tier.DELETED).order_by("-step").first()
    Job.objects.filter(pk=job.pk).update(
        status=Job.Status.PENDING,
        cancel_requested=False,
        attempts=0,
        failure_cause="",
        failure_detail="",
        next_step="",
        finished_at=None,
        lease_owner="",
        lease_expires_at=None,
    )
    job.refresh_from_db()
    job_dispatch(job, initiator=actor)
    audit.record(action="finetune.resumed", actor=actor, target=job, detail={"from_step": newest.step if newest else 0})
    return job


def store_of(host: Host) -> Path:
    """The host's model store (servers read job outputs there)."""
    return Path(host.model_store or settings.MODEL_STORE)


def output_home(base: ModelArtifact, job: Job, what: str) -> Path:
    """Where a fine-tune's adapter or a merged model lives: the base's host model store (servers read it there)."""
    name = base.repo.repo_id.rsplit("/", 1)[-1]
    return store_of(base.host) / f"finetunes--{name}" / f"{what}-job-{job.pk}"


def register_output(
    *, job: Job, base: ModelArtifact, kind: str, path: Path, manifest: dict, lineage: dict, repo_id: str, action: str
) -> ModelArtifact:
    source, _created = ModelSource.objects.get_or_create(
        name=FINETUNE_SOURCE, defaults={"kind": ModelSource.Kind.LOCAL}
    )
    files = manifest.get("files") or []
    digest = manifest_digest(manifest)
    repo = ModelRepo.objects.create(
        source=source,
        repo_id=repo_id,
        requested_revision=kind,
        commit=digest[:40],
        total_size=sum(int(f.get("size") or 0) for f in files),
        files=[{"path": f["path"], "size": f.get("size"), "sha256": f.get("sha256")} for f in files],
        created_by=job.actor,
    )
    artifact = ModelArtifact.objects.create(
        repo=repo,
        host=base.host,
        path=str(path),
        status=ModelArtifact.Status.READY,
        kind=kind,
        base=base,
        lineage=lineage,
        produced_by=job,
        imported=True,
        files_sha256={f["path"]: f.get("sha256") for f in files},
        manifest=manifest,
        bytes_done=repo.total_size,
        bytes_total=repo.total_size,
        created_by=job.actor,
        ready_at=timezone.now(),
    )
    audit.record(
        action=action,
        actor=None,
        actor_name=f"agent:{base.host.name}",
        target=artifact,
        detail={"job": job.pk, "lineage": {k: v for k, v in lineage.items() if k != "metrics"}},
    )
    return artifact


def manifest_digest(manifest: dict) -> str:
    """The identity of what a manifest lists (its files' paths, sizes and sha256): the registered "commit"."""
    return hashlib.sha256(json.dumps(manifest.get("files") or [], sort_keys=True).encode()).hexdigest()


@transaction.atomic
def finetune_finished(*, job: Job, result: dict, path: Path, manifest: dict) -> ModelArtifact:
    """Register what a fine-tune produced (an adapter, or a full model), with its lineage; audited."""
    base = ModelArtifact.objects.select_related("repo", "host").get(pk=job.params["base_artifact_id"])
    version = DatasetVersion.objects.select_related("dataset").get(pk=job.params["dataset_version_id"])
    program_lineage = manifest.get("lineage") or {}
    lineage = {
        "base": f"{base.repo.repo_id}@{base.repo.commit or 'local'}",
        "base_artifact": base.pk,
        "dataset": version.dataset.name,
        "dataset_version": version.version,
        "dataset_sha256": version.sha256,
        "method": job.params["options"]["method"],
        "precision": program_lineage.get("precision"),
        "hyperparameters": program_lineage.get("hyperparameters") or job.params["options"]["hyperparameters"],
        "code_version": program_lineage.get("versions") or {},
        "metrics": result.get("metrics") or {},
        "steps": result.get("step"),
        "training_seconds": result.get("training_seconds"),
        "job": job.pk,
    }
    kind = ModelArtifact.Kind.ADAPTER if result.get("kind") == "adapter" else ModelArtifact.Kind.MODEL
    name = base.repo.repo_id.rsplit("/", 1)[-1]
    return register_output(
        job=job,
        base=base,
        kind=kind,
        path=path,
        manifest=manifest,
        lineage=lineage,
        repo_id=f"{name}-ft-{job.pk}",
        action="finetune.finished",
    )


@transaction.atomic
def merge_start(*, actor, adapter: ModelArtifact, precision: str = "auto") -> Job:
    """Merge a LoRA adapter into its base model: a full model artifact on the same host."""
    require(actor, roles.FINETUNE)
    if adapter.kind != ModelArtifact.Kind.ADAPTER or adapter.base_id is None:
        raise ApplicationError(_("Only a LoRA adapter can be merged into its base model."))
    if adapter.status != ModelArtifact.Status.READY or adapter.base.status != ModelArtifact.Status.READY:
        raise ApplicationError(_("The adapter and its base model must both be ready."))
    if precision not in PRECISIONS:
        raise ApplicationError(_("Choose a precision: %(list)s.") % {"list": ", ".join(PRECISIONS)}, field="precision")
    job = job_create(
        kind=Job.Kind.MERGE,
        actor=actor,
        target=adapter,
        queue=adapter.host.queue,
        params={"adapter_artifact_id": adapter.pk, "precision": precision},
    )
    audit.record(action="adapter.merge_requested", actor=actor, target=adapter, detail={"job": job.pk})
    return job


@transaction.atomic
def merge_finished(*, job: Job, path: Path, manifest: dict, seconds: float | None) -> ModelArtifact:
    adapter = ModelArtifact.objects.select_related("repo", "base__repo", "base__host").get(
        pk=job.params["adapter_artifact_id"]
    )
    base = adapter.base
    lineage = {
        **{k: v for k, v in adapter.lineage.items() if k not in ("job",)},
        "merged_from": f"{adapter.repo.repo_id}@{adapter.repo.commit}",
        "adapter_artifact": adapter.pk,
        "merge_precision": job.params.get("precision"),
        "merge_seconds": seconds,
        "job": job.pk,
    }
    return register_output(
        job=job,
        base=base,
        kind=ModelArtifact.Kind.MODEL,
        path=path,
        manifest=manifest,
        lineage=lineage,
        repo_id=f"{adapter.repo.repo_id}-merged-{job.pk}",  # merging again makes another model, named apart
        action="adapter.merged",
    )

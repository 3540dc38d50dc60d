"""The model registry: sources and their allow-list, adding a model (resolve, dedupe, download job),
importing a local directory, cancelling, deleting and garbage-collecting copies. All audited."""

from __future__ import annotations

import ipaddress
import os

from django.conf import settings
from django.db import transaction
from django.urls import reverse
from django.utils.translation import gettext as _

import audit
from audit.recorder import diff
from audit.telemetry import traced
from console import roles
from console.accounts.models import Credential
from console.errors import ApplicationError
from console.permissions import require, require_team_addition, restrict_to_team_additions
from deployments.jobs.services import job_cancel, job_create
from deployments.models import (
    AllowedEndpoint,
    ArtifactUse,
    DeploymentSpec,
    Host,
    Job,
    ModelArtifact,
    ModelRepo,
    ModelSource,
)
from deployments.registry import downloads
from deployments.registry.copies import start_copy
from deployments.registry.endpoints import allow_listed_hops, check_url
from deployments.registry.network import source_unreachable


def source_token(source: ModelSource, credential: Credential | None = None) -> str | None:
    """The token for a download: a chosen stored credential, else the source's own."""
    if credential is not None:
        return credential.value.reveal()
    return source.token.reveal() if source.token else None


@traced("endpoint.allow")
@transaction.atomic
def endpoint_allow(*, actor, pattern: str, note: str = "") -> AllowedEndpoint:
    """Admins allow a host name or network for model sources (manage_inventory)."""
    require(actor, roles.MANAGE_INVENTORY)
    pattern = pattern.strip().lower()
    try:
        ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        if not pattern or any(c in pattern for c in "/:@ ") or pattern.count("*") > 1:
            raise ApplicationError(
                "Give a host name (mirror.corp, *.corp) or a network (10.8.0.0/16).", field="pattern"
            ) from None
    endpoint, created = AllowedEndpoint.objects.get_or_create(pattern=pattern, defaults={"note": note})
    if created:
        audit.record(action="endpoint.allowed", actor=actor, target=endpoint, detail={"note": note})
    return endpoint


@traced("endpoint.remove")
@transaction.atomic
def endpoint_remove(*, actor, endpoint: AllowedEndpoint) -> None:
    require(actor, roles.MANAGE_INVENTORY)
    audit.record(action="endpoint.removed", actor=actor, target=endpoint)
    endpoint.delete()


# The kinds a person creates (local directories come with imports).
SOURCE_KINDS = (ModelSource.Kind.HUB, ModelSource.Kind.MIRROR, ModelSource.Kind.MODELSCOPE)


@traced("source.create")
@transaction.atomic
def source_create(*, actor, name: str, kind: str, endpoint: str = "", token: str | None = None) -> ModelSource:
    """A Hub mirror, the Hub with its own token, or ModelScope (its endpoint, when given, a mirror of it). The
    endpoint must be on the allow-list."""
    require(actor, roles.MANAGE_INVENTORY)
    if kind not in SOURCE_KINDS:
        raise ApplicationError(_("A source is the Hub, a Hub-compatible mirror or ModelScope."), field="kind")
    if ModelSource.objects.filter(name=name).exists():
        raise ApplicationError(f"A source named '{name}' already exists.", field="name")
    if kind == ModelSource.Kind.MIRROR and not endpoint:
        raise ApplicationError("A mirror needs its address.", field="endpoint")
    if endpoint:
        check_url(endpoint)
    elif kind == ModelSource.Kind.MODELSCOPE:
        check_url(settings.MODELSCOPE_ENDPOINT)  # said now, not when the first download is refused
    source = ModelSource.objects.create(name=name, kind=kind, endpoint=endpoint, token=token or None, created_by=actor)
    audit.record(
        action="source.created",
        actor=actor,
        target=source,
        changes=diff({}, {"name": name, "kind": kind, "endpoint": endpoint, "token": source.token}),
    )
    return source


def _resolve(*, source: ModelSource, repo_id: str, revision: str, token: str | None):
    """Resolve the revision to a commit on the source (a metadata call, outside any transaction)."""
    if source.endpoint:
        check_url(source.endpoint)
    try:
        # Every hop is checked as in the worker; someone waits, so an unreachable source is said within
        # HUB_CONNECT_TIMEOUT, as one sentence (SourceUnreachable), not after the library's retries.
        with allow_listed_hops(interactive=True):
            return downloads.resolve(repo_id, revision, endpoint=source.url, token=token, kind=source.kind)
    except downloads.DownloadError as error:
        unreachable = source_unreachable(error, url=source.url)
        if unreachable is not None:
            raise unreachable from None
        raise ApplicationError(f"{error} {error.next_step}".strip(), field=error.field or "repo_id") from None


@traced("model.add")
def model_add(
    *,
    actor,
    source: ModelSource,
    repo_id: str,
    host: Host,
    revision: str = "main",
    credential: Credential | None = None,
    include: list[str] | None = None,
) -> ModelArtifact:
    """Add a model to a host: pin the commit, reuse the copy the host already has, else download it
    there (a job on the host's queue). Admins and engineers may add models."""
    require(actor, roles.ADD_MODEL)
    if credential is not None:
        require(actor, roles.ADD_MODEL, credential)
    repo_id = repo_id.strip()
    if repo_id.count("/") > 1 or not repo_id or any(c in repo_id for c in " \\:"):
        raise ApplicationError("A repo id looks like org/name.", field="repo_id")
    snapshot = _resolve(
        source=source, repo_id=repo_id, revision=revision or "main", token=source_token(source, credential)
    )
    with transaction.atomic():
        if credential is not None:
            audit.record(action="secret.used", actor=actor, target=credential, detail={"purpose": "resolve a model"})
        files = [{"path": f.path, "size": f.size, "sha256": f.sha256, "lfs": f.lfs} for f in snapshot.files]
        repo, _created = ModelRepo.objects.get_or_create(
            source=source,
            repo_id=repo_id,
            commit=snapshot.commit,
            defaults={
                "requested_revision": revision or "main",
                "gated": bool(snapshot.gated),
                "files": files,
                "license": snapshot.license or "",
                "total_size": sum(f.size for f in snapshot.files),
                "created_by": actor,
            },
        )
        artifact = ModelArtifact.objects.select_for_update().filter(repo=repo, host=host).first()
        if artifact is not None and artifact.status in (
            ModelArtifact.Status.READY,
            ModelArtifact.Status.PENDING,
            ModelArtifact.Status.DOWNLOADING,
        ):
            return artifact  # stored once per host and shared
        if artifact is None:
            artifact = ModelArtifact.objects.create(repo=repo, host=host, created_by=actor, bytes_total=repo.total_size)
        else:
            artifact.status = ModelArtifact.Status.PENDING
            artifact.save(update_fields=["status"])
        audit.record(
            action="model.download_requested",
            actor=actor,
            target=artifact,
            detail={"repo": repo_id, "commit": repo.commit, "host": host.name, "source": source.name},
        )
        job_create(
            kind=Job.Kind.DOWNLOAD,
            actor=actor,
            target=artifact,
            queue=host.queue,
            params={"credential_id": credential.pk if credential else None, "include": include or []},
        )
    return artifact


class AlreadyImported(ApplicationError):
    """The directory is in the registry already (on that host): one record per directory, so its manifest is not
    counted as a model file of a second one. `artifact` is the record to use instead."""

    def __init__(self, artifact: ModelArtifact) -> None:
        self.artifact = artifact
        self.url = reverse("model-detail", args=[artifact.pk])
        super().__init__(
            _(
                "%(directory)s on %(host)s is already imported as %(name)s (#%(id)s, %(url)s): use that record, or "
                "delete it before importing the directory again."
            )
            % {
                "directory": artifact.path,
                "host": artifact.host.name,
                "name": artifact.repo.repo_id,
                "id": artifact.pk,
                "url": self.url,
            },
            field="directory",
        )


RETRYABLE_IMPORT = (ModelArtifact.Status.FAILED, ModelArtifact.Status.CANCELLED)


@traced("model.import")
@transaction.atomic
def model_import(*, actor, host: Host, directory: str, repo_id: str) -> ModelArtifact:
    """Register a directory already on a host (air-gapped sites): its agent validates and hashes it. A directory
    is imported once per host: a second import is refused naming the existing record (a failed or cancelled one
    is imported again, in place)."""
    require(actor, roles.ADD_MODEL)
    directory = import_directory(directory)
    Host.objects.select_for_update().filter(pk=host.pk).first()  # two imports of one directory: one waits
    existing = (
        ModelArtifact.objects.select_related("repo", "host")
        .filter(host=host, imported=True, path=directory)
        .exclude(status=ModelArtifact.Status.DELETED)
        .order_by("-pk")
        .first()
    )
    if existing is not None and existing.status not in RETRYABLE_IMPORT:
        raise AlreadyImported(existing)
    if existing is not None:
        artifact = existing
        artifact.status = ModelArtifact.Status.PENDING
        artifact.save(update_fields=["status"])
    else:
        source, _created = ModelSource.objects.get_or_create(
            name="Local directories", defaults={"kind": ModelSource.Kind.LOCAL}
        )
        repo = ModelRepo.objects.create(
            source=source,
            repo_id=repo_id or directory.rstrip("/").rsplit("/", 1)[-1],
            requested_revision="local",
            commit="",
            created_by=actor,
        )
        artifact = ModelArtifact.objects.create(repo=repo, host=host, path=directory, imported=True, created_by=actor)
    audit.record(
        action="model.import_requested",
        actor=actor,
        target=artifact,
        detail={"directory": directory, "host": host.name, "again": existing is not None},
    )
    job_create(kind=Job.Kind.IMPORT, actor=actor, target=artifact, queue=host.queue)
    return artifact


def import_roots() -> list[str]:
    """The directories imports may come from (MODEL_IMPORT_ROOTS, else the model store), as real paths. Each
    agent applies its own settings too; these are the console's."""
    return [os.path.realpath(str(root)) for root in (settings.MODEL_IMPORT_ROOTS or [settings.MODEL_STORE])]


def import_directory(directory: str) -> str:
    """The normalised directory if it lies under MODEL_IMPORT_ROOTS (the agent writes a manifest there)."""
    if not directory.startswith("/"):
        raise ApplicationError(_("Give the absolute path of the directory on that host."), field="directory")
    if ".." in directory.split("/"):
        raise ApplicationError(_("The path may not contain '..'."), field="directory")
    # Real paths on both sides: a symlink under a root that points elsewhere is outside it. The web process and
    # the agent both call this, each resolving the links its own filesystem has.
    real = os.path.realpath(directory)
    roots = import_roots()
    if not any(real == root or real.startswith(root.rstrip("/") + "/") for root in roots):
        raise ApplicationError(
            _("Import from these directories only: %(roots)s (MODEL_IMPORT_ROOTS).") % {"roots": ", ".join(roots)},
            field="directory",
        )
    return real


def artifact_jobs(artifact: ModelArtifact):
    return Job.objects.filter(target_type="deployments.modelartifact", target_id=str(artifact.pk)).order_by("-id")


ON_THEIR_WAY = (ModelArtifact.Status.READY, ModelArtifact.Status.PENDING, ModelArtifact.Status.DOWNLOADING)


@traced("model.copy_to_host")
@transaction.atomic
def artifact_on_host(*, actor, artifact: ModelArtifact, host: Host) -> ModelArtifact:
    """The copy of `artifact`'s repo@commit on `host`, for a launch placed there: the artifact itself, a copy
    the host already has (ready or on its way), else a download to that host with the files the original chose (Hub
    and mirror models), or a copy from a host holding it (imports, console-made models, and any model when
    MODEL_COPY_FIRST is set). The caller (a launch) has authorized the actor."""
    if artifact.host_id == host.pk:
        return artifact
    existing = ModelArtifact.objects.select_for_update().filter(repo=artifact.repo, host=host).first()
    if existing is not None and existing.status in ON_THEIR_WAY:
        return existing
    source = artifact.repo.source
    fetchable = not artifact.imported and source.kind != ModelSource.Kind.LOCAL
    if not fetchable or settings.MODEL_COPY_FIRST:
        # An import or a console-made model exists only on the hosts: copied from one that holds it, through the
        # console (deployments/registry/copies.py). MODEL_COPY_FIRST: the same for Hub models on a closed site.
        holder = _ready_holder(artifact)
        if holder is not None:
            return start_copy(actor=actor, source=holder, host=host, reason=f"a launch was placed on {host}")
        if not fetchable:
            raise ApplicationError(
                _("%(model)s exists only on %(holder)s, where it is not ready; %(host)s cannot get it.")
                % {"model": artifact.repo.repo_id, "holder": artifact.host, "host": host},
                field="artifact",
            )
    original = artifact_jobs(artifact).filter(kind=Job.Kind.DOWNLOAD).first()
    params = {key: (original.params if original else {}).get(key) for key in ("credential_id", "include")}
    if existing is None:
        existing = ModelArtifact.objects.create(
            repo=artifact.repo, host=host, created_by=actor if getattr(actor, "is_authenticated", False) else None,
            bytes_total=artifact.repo.total_size,
        )  # fmt: skip
    else:
        existing.status = ModelArtifact.Status.PENDING
        existing.save(update_fields=["status"])
    audit.record(
        action="model.download_requested",
        actor=actor,
        target=existing,
        detail={
            "repo": artifact.repo.repo_id,
            "commit": artifact.repo.commit,
            "host": host.name,
            "source": source.name,
            "reason": f"a launch was placed on {host}",
        },
    )
    job_create(
        kind=Job.Kind.DOWNLOAD,
        actor=actor,
        target=existing,
        queue=host.queue,
        params={"credential_id": params["credential_id"], "include": params["include"] or []},
    )
    return existing


def _ready_holder(artifact: ModelArtifact) -> ModelArtifact | None:
    """A ready copy of the artifact's repo to copy from: the artifact itself first, then one on an online host."""
    if artifact.status == ModelArtifact.Status.READY:
        return artifact
    ready = ModelArtifact.objects.filter(repo=artifact.repo, status=ModelArtifact.Status.READY).select_related("host")
    return ready.order_by("host__status", "host__name").first()


@traced("model.cancel")
@transaction.atomic
def model_cancel(*, actor, artifact: ModelArtifact, delete_partial: bool = False) -> Job:
    """Stop a download; the partial files stay for a later resume unless delete_partial."""
    require(actor, roles.ADD_MODEL)
    job = artifact_jobs(artifact).filter(status__in=Job.Status.active(), kind=Job.Kind.DOWNLOAD).first()
    if job is None:
        raise ApplicationError("Nothing is downloading for this model on that host.")
    return job_cancel(actor=actor, job=job, action=roles.ADD_MODEL, delete_partial=delete_partial)


@traced("model.delete")
@transaction.atomic
def artifact_delete(*, actor, artifact: ModelArtifact) -> Job:
    """Remove a host's copy (a job on that host deletes the files). Refused while something uses it or a
    deployment's spec (any version) names it, and to anyone but an admin or the team that added it."""
    require(actor, roles.ADD_MODEL)
    require_team_addition(actor, roles.ADD_MODEL, artifact)
    holders = list(ArtifactUse.objects.filter(artifact=artifact).values_list("holder", flat=True))
    if holders:
        raise ApplicationError(f"{artifact} is in use by {', '.join(holders)}; stop those first.")
    named_by = sorted(set(DeploymentSpec.objects.filter(artifact=artifact).values_list("deployment__name", flat=True)))
    if named_by:
        raise ApplicationError(
            f"{artifact} is named by the spec of {', '.join(named_by)} (a stopped deployment, or an older version "
            "it can roll back to); delete those deployments first."
        )
    if artifact_jobs(artifact).filter(status__in=Job.Status.active(), kind=Job.Kind.DOWNLOAD).exists():
        raise ApplicationError("It is still downloading; cancel the download first.")
    deleting = artifact_jobs(artifact).filter(status__in=Job.Status.active(), kind=Job.Kind.DELETE).first()
    if deleting is not None:
        return deleting  # already being deleted: one job is enough
    audit.record(action="model.delete_requested", actor=actor, target=artifact, detail={"path": artifact.path})
    return job_create(kind=Job.Kind.DELETE, actor=actor, target=artifact, queue=artifact.host.queue)


def gc_candidates(*, actor, host: Host | None = None):
    """Ready copies nothing uses, no deployment's spec names and nothing is deleting yet, among those the actor's
    team owns (all of them for an admin): what garbage collection would delete."""
    deleting = Job.objects.filter(
        kind=Job.Kind.DELETE, status__in=Job.Status.active(), target_type="deployments.modelartifact"
    ).values_list("target_id", flat=True)
    named = DeploymentSpec.objects.values_list("artifact_id", flat=True)
    artifacts = (
        ModelArtifact.objects.filter(status=ModelArtifact.Status.READY, uses__isnull=True)
        .exclude(pk__in=[int(pk) for pk in deleting])
        .exclude(pk__in=named)
    )
    artifacts = restrict_to_team_additions(artifacts, actor)
    return artifacts.filter(host=host) if host else artifacts


def artifacts_gc(*, actor, host: Host | None = None) -> list[Job]:
    """Delete every unused copy the actor's team owns (the UI asks for confirmation first); each deletion
    stands on its own."""
    return [artifact_delete(actor=actor, artifact=artifact) for artifact in gc_candidates(actor=actor, host=host)]
